"""Plain helper modules of the tests (models, data and scripts they share), imported as ``helpers.<name>``;
the scripts are run as ``python tests/helpers/<script>.py`` by tests that need a separate process."""
