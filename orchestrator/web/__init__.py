"""`distctl web`: a live view of a run in the browser, served from the workstation alone.

The server (`server.py`, aiohttp from the optional `web` extra) listens on loopback only and
answers only requests that carry the run's secret token (`security.py`). What it shows comes
from the same places `logs` and `status` read: one follower per host for the rank logs
(`feed.py`), one status command per host every few seconds for rank states and host health.
Progress lines become per-rank series (`progress.py`), downsampled on the workstation to a
bounded number of buckets each (`series.py`), held in one view (`view.py`) that the page
receives as deltas over server-sent events. The page (`static/`) draws its own charts on a
canvas: no framework, no CDN, it works offline.
"""

from __future__ import annotations

INSTALL_HINT = "the live view needs the web extra: pip install 'distctl[web]' (aiohttp)"
