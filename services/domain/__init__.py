"""The pure training domain: curriculum interface, metrics, per-mouse state and the engine.

Its modules import one way (tests/unit/test_domain_layers.py checks it): ``core`` (``evolve``,
``decide``, :class:`TrainingCore`) imports ``recompute`` (late sessions), which imports
``judge`` (judging a session), which imports ``interventions``, which imports ``outputs``
(output ids, the one AssignmentIssued constructor); all of them import the foundations
``curriculum`` (the curriculum interface, the catalog), ``state`` and ``metrics``.

Nothing here performs I/O or imports Kafka, SQLAlchemy, faust or gpiozero (ruff enforces it).
Curricula are loaded from files by ``shaping.services.curricula``, which hands the core a
:class:`CurriculumCatalog`.
"""

from shaping.services.domain.core import TrainingCore, derived_event_id, evolve, fold, initial_state
from shaping.services.domain.curriculum import (
    CurriculumCatalog,
    CurriculumEngine,
    Evaluation,
    MetricSource,
)
from shaping.services.domain.errors import CurriculumError, DomainError, ImpossibleEvent
from shaping.services.domain.metrics import METRICS, MetricDefinition, MetricRegistry
from shaping.services.domain.state import MouseState

__all__ = [
    "METRICS",
    "CurriculumCatalog",
    "CurriculumEngine",
    "CurriculumError",
    "DomainError",
    "Evaluation",
    "ImpossibleEvent",
    "MetricDefinition",
    "MetricRegistry",
    "MetricSource",
    "MouseState",
    "TrainingCore",
    "derived_event_id",
    "evolve",
    "fold",
    "initial_state",
]
