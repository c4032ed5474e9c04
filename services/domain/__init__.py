"""The pure training domain: curricula, metrics, per-mouse state and the decision engine.

Nothing here performs I/O or imports Kafka, SQLAlchemy, faust or gpiozero (ruff enforces it).
"""

from services.domain.builtin import basic_curriculum
from services.domain.core import TrainingCore, derived_event_id, evolve, fold, initial_state
from services.domain.curriculum import CurriculumCatalog, CurriculumEngine
from services.domain.errors import CurriculumError, DomainError, ImpossibleEvent
from services.domain.state import MouseState


def default_catalog() -> CurriculumCatalog:
    """The curricula shipped with Shaping."""
    return CurriculumCatalog([basic_curriculum()])


__all__ = [
    "CurriculumCatalog",
    "CurriculumEngine",
    "CurriculumError",
    "DomainError",
    "ImpossibleEvent",
    "MouseState",
    "TrainingCore",
    "basic_curriculum",
    "default_catalog",
    "derived_event_id",
    "evolve",
    "fold",
    "initial_state",
]
