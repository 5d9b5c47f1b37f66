"""Shared test setup. Tests never download: hubs are switched off before anything imports them."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")
