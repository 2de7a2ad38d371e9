"""The hierarchical VQ-VAE: encoders and decoders per level (``encdec``, ``resnet``), the codebooks
(``bottleneck``), the model (``vqvae``) and its training losses."""
