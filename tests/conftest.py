"""Shared test setup. Tests never download: hubs are switched off before anything imports them."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")
# With other processes on the same cores, OpenMP threads that spin-wait make torch 10-100x slower
# (a 64x64 TransFuse-S step: 0.7 s passive, 10-24 s spinning, measured on the 2-core CI machine).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
