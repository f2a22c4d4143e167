"""Study kinds of ``lsm run``: one module per kind behind one interface.

Each module declares a :class:`~lsm.workflows.studies.base.StudyKind`: its
config (a :class:`lsm.config.pipeline.StudyOptions` subclass), how a study
expands into steps, and how it summarises the results (tables, figures).
:data:`STUDIES` is the registry, keyed by kind; a new kind is one new module
with a class decorated with :func:`register_study` (imported below, or by a
plug-in or test before the pipeline is loaded).

Built in: ``shots`` (:mod:`.shots`), ``source_scale`` (:mod:`.source_scale`),
``progressive`` (:mod:`.progressive`).
"""

from lsm.workflows.studies import progressive, shots, source_scale  # noqa: F401  (register)
from lsm.workflows.studies.base import STUDIES, StudyKind, Table, register_study, study_kind

__all__ = ["STUDIES", "StudyKind", "Table", "register_study", "study_kind"]
