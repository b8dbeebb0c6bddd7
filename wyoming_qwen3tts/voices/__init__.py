"""The voice catalog: what a request may ask for, read from the model and the voices directory.

entry.py      one voice as the directory describes it (VoiceEntry), and VoiceError
config.py     voices.json: named voices of every kind in one file
directory.py  the per-file layout beside voices.json, and change detection
catalog.py    entries -> the Voices the loaded model can speak, rebuilt on change
prompt_cache.py  Base-model clone prompts stored on disk (safetensors), keyed by content

Request names are only ever looked up in the catalog built here: no name from
a client is turned into a path.
"""

from .catalog import DEFAULT_DESIGN_INSTRUCTION, ModelVoices, VoiceCatalog, preset_voices
from .config import CONFIG_NAME
from .directory import AUDIO_SUFFIXES, VoiceScan, VoicesDirectory
from .entry import VoiceEntry, VoiceError
from .prompt_cache import ClonePromptCache, StoredPrompt, model_fingerprint, prompt_key

__all__ = [
    "AUDIO_SUFFIXES",
    "CONFIG_NAME",
    "DEFAULT_DESIGN_INSTRUCTION",
    "ClonePromptCache",
    "ModelVoices",
    "StoredPrompt",
    "VoiceCatalog",
    "VoiceEntry",
    "VoiceError",
    "VoiceScan",
    "VoicesDirectory",
    "model_fingerprint",
    "preset_voices",
    "prompt_key",
]
