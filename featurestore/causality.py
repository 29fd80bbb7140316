"""Checks on what a transform returns, under their historical name.

The work lives in modules with one job each: ``featurestore.contract`` (``check_contract``,
``declared_output_schema``: schema, rows, keys and times), ``featurestore.framediff``
(``first_difference``: comparing two outputs row by row) and ``featurestore.verification``
(``verify_causality``), with the cut planning in ``featurestore.cutplan`` (``plan_cuts``,
``CutPlan``) and ``featurestore.cutsites`` (blocks and categories), and the report in
``featurestore.verifyreport`` (``VerificationReport``). Import from here or from those modules;
the names are the same objects.
"""

from featurestore.contract import check_contract, declared_output_schema
from featurestore.cutplan import CutPlan, plan_cuts
from featurestore.framediff import first_difference
from featurestore.verification import VerificationReport, verify_causality

__all__ = [
    "CutPlan",
    "VerificationReport",
    "check_contract",
    "declared_output_schema",
    "first_difference",
    "plan_cuts",
    "verify_causality",
]
