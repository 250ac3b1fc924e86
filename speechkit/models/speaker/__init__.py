"""Speaker embeddings: an ECAPA-TDNN over fbank trained with an additive angular margin softmax
on the corpus's voices; the timbre input of voice conversion and usable alone (``speechkit speaker``)."""
