"""Run configs live in lsm.config.run; pipeline studies inherit the fine-tune options."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lsm.config.pipeline import parse_pipeline
from lsm.config.run import FinetuneConfig, FinetuneOptions, FitConfig


def test_old_import_places_still_work() -> None:
    from lsm.workflows.finetune import FinetuneConfig as F2
    from lsm.workflows.fit import FitConfig as F1

    assert F1 is FitConfig and F2 is FinetuneConfig


def test_family_names_come_from_the_registry() -> None:
    from lsm.models.base import FAMILY_NAMES

    assert FitConfig(source="demo-source").models == list(FAMILY_NAMES)
    with pytest.raises(ValidationError, match="unknown model family 'svm'"):
        FitConfig(source="demo-source", models=["svm"])
    with pytest.raises(ValidationError, match="unknown model family"):
        FinetuneConfig(target="demo-target", models=["lr", "nope"])


def test_every_finetune_option_is_a_study_option() -> None:
    data = {"name": "p", "studies": [{"kind": "shots", "source": "demo-source",
                                      "targets": ["demo-target"], "anchor": "fixed",
                                      "reweight": True, "repeats": 2}]}
    study = parse_pipeline(data).studies[0]
    opts = study.finetune_options()
    assert set(FinetuneOptions.model_fields) <= set(opts)
    assert opts["anchor"] == "fixed" and opts["reweight"] is True and opts["repeats"] == 2
    # and they are what a fine-tune step is configured with
    FinetuneConfig(target="demo-target", **opts)


def test_bad_study_option_names_the_key() -> None:
    from lsm.errors import SpecError

    data = {"name": "p", "studies": [{"kind": "shots", "source": "demo-source",
                                      "targets": ["demo-target"], "anchor": "sometimes"}]}
    with pytest.raises(SpecError, match="anchor"):
        parse_pipeline(data, source="p.yaml")
