"""``python -m services.processor``: runs the processor with settings from ``SHAPING_*``."""

from services.common.settings import Settings
from services.processor.app import run_processor

if __name__ == "__main__":
    run_processor(Settings())
