"""Neural audio codecs: a streaming waveform VAE (continuous latents) and an RVQ codec (token streams)."""
