"""Text-to-music over RVQ token streams of our codec: MAGNeT (masked non-autoregressive, span
masking, restricted attention for the fine codebooks), a MusicGen-style delay-pattern AR baseline,
and the caption tokenizer and encoder they share. Decoding loops: ``speechkit.decoding.magnet``."""
