"""Large-scale network labels for atlases that do not carry them.

The AAL family (AAL, AAL2, AAL3) labels regions anatomically. fmrilm assigns each AAL region by
hand to the Yeo-7 cortical network (Yeo et al., 2011) that, anatomically, covers most of it, or to
``Subcortical``/``Cerebellum``; where a gyrus is split between networks (e.g. superior temporal
gyrus: auditory/somatomotor vs. ventral attention) the majority wins. No Yeo-7 volume ships
offline to compute overlaps, so the mapping is approximate by construction; it is documented in
``docs/atlases.md``. Keys are region names without the ``_L``/``_R``
hemisphere suffix.
"""

from __future__ import annotations

import re

YEO7 = (
    "Visual",
    "Somatomotor",
    "DorsalAttention",
    "VentralAttention",
    "Limbic",
    "Frontoparietal",
    "Default",
)
NETWORKS = (*YEO7, "Subcortical", "Cerebellum")

_AAL_NETWORK = {
    # Visual
    "Calcarine": "Visual",
    "Cuneus": "Visual",
    "Lingual": "Visual",
    "Occipital_Sup": "Visual",
    "Occipital_Mid": "Visual",
    "Occipital_Inf": "Visual",
    "Fusiform": "Visual",
    # Somatomotor (includes auditory cortex, as Yeo-7 does)
    "Precentral": "Somatomotor",
    "Postcentral": "Somatomotor",
    "Paracentral_Lobule": "Somatomotor",
    "Supp_Motor_Area": "Somatomotor",
    "Rolandic_Oper": "Somatomotor",
    "Heschl": "Somatomotor",
    "Temporal_Sup": "Somatomotor",
    # Dorsal attention
    "Parietal_Sup": "DorsalAttention",
    # Ventral attention / salience
    "Insula": "VentralAttention",
    "Cingulate_Mid": "VentralAttention",
    "Cingulum_Mid": "VentralAttention",
    "ACC_sup": "VentralAttention",
    "Frontal_Inf_Oper": "VentralAttention",
    "SupraMarginal": "VentralAttention",
    # Limbic
    "Temporal_Pole_Sup": "Limbic",
    "Temporal_Pole_Mid": "Limbic",
    "Temporal_Inf": "Limbic",
    "Rectus": "Limbic",
    "Olfactory": "Limbic",
    "OFCmed": "Limbic",
    "OFCant": "Limbic",
    "OFCpost": "Limbic",
    "OFClat": "Limbic",
    "Frontal_Sup_Orb": "Limbic",
    "Frontal_Mid_Orb": "Limbic",
    "ACC_sub": "Limbic",
    "Hippocampus": "Limbic",
    "ParaHippocampal": "Limbic",
    # Frontoparietal control
    "Frontal_Mid": "Frontoparietal",
    "Frontal_Mid_2": "Frontoparietal",
    "Frontal_Inf_Tri": "Frontoparietal",
    "Parietal_Inf": "Frontoparietal",
    # Default mode
    "Frontal_Sup": "Default",
    "Frontal_Sup_2": "Default",
    "Frontal_Sup_Medial": "Default",
    "Frontal_Med_Orb": "Default",
    "Frontal_Inf_Orb": "Default",
    "Frontal_Inf_Orb_2": "Default",
    "Cingulate_Ant": "Default",
    "Cingulum_Ant": "Default",
    "ACC_pre": "Default",
    "Cingulate_Post": "Default",
    "Cingulum_Post": "Default",
    "Precuneus": "Default",
    "Angular": "Default",
    "Temporal_Mid": "Default",
    # Subcortical
    "Amygdala": "Subcortical",
    "Caudate": "Subcortical",
    "Putamen": "Subcortical",
    "Pallidum": "Subcortical",
    "Thalamus": "Subcortical",
    "N_Acc": "Subcortical",
    "VTA": "Subcortical",
    "SN_pc": "Subcortical",
    "SN_pr": "Subcortical",
    "Red_N": "Subcortical",
    "LC": "Subcortical",
    "Raphe_D": "Subcortical",
    "Raphe_M": "Subcortical",
}

_HEMI = re.compile(r"_(L|R)$")


def aal_network(name: str) -> str:
    """Network label of an AAL/AAL2/AAL3 region name, or ``""`` when unknown."""
    base = _HEMI.sub("", name)
    if base.startswith(("Cerebellum_", "Cerebelum_", "Vermis_")):
        return "Cerebellum"
    if base.startswith("Thal_"):
        return "Subcortical"
    return _AAL_NETWORK.get(base, "")
