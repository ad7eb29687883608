"""The LiteLLM integration's tests run against the real ``litellm`` package.

LiteLLM is told to use its bundled model-cost map, so it makes no network
call of its own; the backends it talks to are fake neurons on loopback.
"""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
