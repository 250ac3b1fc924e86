"""The families' ``speechkit`` subcommands (``codec``, ``tts``): argument parsers and the thin
functions that call into models, train, export, eval and the runtime. Beside :mod:`speechkit.cli`,
above everything they call, so the model packages hold only modules and their math."""
