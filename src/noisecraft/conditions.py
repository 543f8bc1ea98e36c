"""The condition keywords every layer shares (DESIGN §2.5), each written once.

A leaf module: data sets, networks, guidance, conditioning and the trainer all import from here.
"""

from __future__ import annotations

NULL_LABEL = -1
"""The label meaning "no class": what unlabelled data yields, what label dropout and classifier-free
guidance's unconditional branch write, and what a class embedding maps to its learned null row."""

TEXT_KEYS = ("text", "text_mask", "text_pooled")
"""The keyword arguments that carry a text condition into a net: token embeddings, their mask and
the pooled embedding (``conditioning.text_conditions`` builds them)."""
