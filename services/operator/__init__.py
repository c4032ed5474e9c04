"""The operator's read-only tools and enrolment: ``shaping status``, ``history``, ``export``,
``plot`` and ``enroll``.

The reading commands query the projector's status tables (:mod:`shaping.services.projector.tables`)
and never write to them; ``enroll`` publishes a MouseEnrolled event, the only way an operator
changes anything. Heavy imports (SQLAlchemy, pandas, matplotlib) happen inside the commands, so
``shaping`` stays light on a rig.
"""
