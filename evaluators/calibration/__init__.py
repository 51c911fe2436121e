"""Fit a policy's thresholds on labelled examples and write a new policy version.

``assay calibrate`` reads a CSV of texts with 0/1 labels per ``check.label``,
scores the texts with the policy's own checks (through ``PolicyEngine``, so
scores match production), fits each label's threshold to a target
(``precision>=P``, ``recall>=R``, ``f1`` or ``fbeta=B``) and writes a new
policy file: the original YAML text with only the threshold values, the
version and a ``calibration:`` record changed, so comments survive. The
written file is validated with the normal loader and compared with the
intended policy before anything is reported as done.

Platt and isotonic scaling are measured (held-out Brier score and log-loss)
and reported, not applied: a monotone map does not change which texts a
threshold selects, and findings keep the checks' raw scores.

The modules, in the order a calibration runs:

- ``labelled``: the labelled CSV, read and checked;
- ``fields``: which policy field sets which threshold;
- ``fitting``: targets, counts and Wilson intervals, the threshold search, held-out figures;
- ``run``: planning, scoring with the policy's checks, and fitting (``calibrate``);
- ``rewrite``: the new policy version, edited into the original text;
- ``report``: the table ``assay calibrate`` prints;
- ``errors``: what calibration raises.
"""
