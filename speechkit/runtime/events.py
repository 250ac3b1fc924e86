"""What a stream has newly said since it was last asked: final segments and the changed partial,
as small result records. One tracker per stream serves the terminal demo, the Python API's
streaming sessions and the WebSocket server alike."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from speechkit.runtime.asr import OnlineRecognizer, Stream


@dataclass(frozen=True)
class Result:
    """One update. ``kind`` is "partial" (the current segment so far; it may still change) or
    "final" (a finished segment; never changes). Times are seconds from the start of the stream:
    ``start`` where the segment began, ``end`` how far the decoded audio reaches (for a final, the
    segment's end); ``times`` is one onset per token."""

    kind: str
    text: str
    segment: int
    start: float
    end: float
    tokens: tuple[str, ...] = ()
    times: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["type"] = d.pop("kind")
        d["tokens"], d["times"] = list(self.tokens), list(self.times)
        return d


class ResultTracker:
    """Turns a stream's state into the results not reported yet."""

    def __init__(self, rec: OnlineRecognizer):
        self.rec = rec
        self.finals = 0
        self.partial = ""

    def update(self, s: Stream) -> list[Result]:
        out = [Result("final", seg.text, self.finals + i, seg.start, seg.end, tuple(seg.tokens), tuple(seg.times))
               for i, seg in enumerate(s.finals[self.finals :])]
        self.finals = len(s.finals)
        if s.partial and s.partial != self.partial:
            sec = self.rec.frame_seconds
            out.append(Result("partial", s.partial, self.finals, round(s.segment_start * sec, 3), round(s.enc_frames * sec, 3)))
        self.partial = s.partial
        return out
