#!/usr/bin/env bash
# Pretrain where landslides are many, fine-tune where they are few, map the result.
set -euo pipefail
REGION=${1:-examples/my_region.yaml}
lsm stack --region "$REGION"                       # check the spec first
lsm fit --source hongkong                          # -> runs/hongkong
lsm finetune --target "$REGION" --shots 50 --from runs/hongkong --prevalence 0.02
# maps, figures, SHAP and report.md are written into runs/hongkong-to-<region>-k50/
