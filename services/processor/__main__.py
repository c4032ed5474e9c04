"""``python -m shaping.services.processor``: runs the processor with settings from ``SHAPING_*``."""

from shaping.services.adapters.settings import Settings
from shaping.services.processor.app import run_processor

if __name__ == "__main__":
    run_processor(Settings())
