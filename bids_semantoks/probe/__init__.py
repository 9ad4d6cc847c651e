"""Group level: linear probes of Semantoks embeddings and functional connectivity on phenotypes.

Modules: :mod:`.options` (settings), :mod:`.phenotypes` (targets, confounds),
:mod:`.features` (inputs, feature sets), :mod:`.cv` (splits, in-fold confound
regression), :mod:`.probes` (estimators), :mod:`.evaluate` (outer CV loop),
:mod:`.metrics`, :mod:`.report`, :mod:`.group` (orchestration, outputs).
"""

from bids_semantoks.probe.group import run_group
from bids_semantoks.probe.options import GroupOptions

__all__ = ["GroupOptions", "run_group"]
