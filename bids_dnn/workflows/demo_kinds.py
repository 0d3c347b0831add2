"""The demo datasets by kind (``bids_dnn demo DIR --kind images|text|audio``)."""

from __future__ import annotations

from bids_dnn.workflows.demo import IMAGE_DEMO, DemoKind
from bids_dnn.workflows.demo_text_audio import AUDIO_DEMO, TEXT_DEMO

__all__ = ["DEMO_KINDS"]

#: kind name -> what its stimuli are and what the responses follow
DEMO_KINDS: dict[str, DemoKind] = {kind.name: kind for kind in (IMAGE_DEMO, TEXT_DEMO, AUDIO_DEMO)}
