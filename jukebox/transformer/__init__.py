"""The sparse transformer: attention patterns and their cache layouts (``patterns``), factored attention
(``factored_attention``), the key/value cache of a sampling run (``kv_cache``), the residual stack
(``transformer``) and its small layers (``ops``)."""
