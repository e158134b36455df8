"""A hand-written Med-R2 answer the tests feed to micro models as if generated (saliency, confidence)."""

GENERATED = """<think>
<perception>
heart: cardiothoracic ratio about 0.46, normal heart size.
right lung, lower zone: blunted costophrenic angle with a meniscus.
left lung: clear, markings reach the periphery.
devices: none.
</perception>
<reasoning>
blunted angle with meniscus -> small right pleural effusion [rule: effusion_meniscus]
</reasoning>
<draft>
Findings: Small right pleural effusion. Impression: Small right pleural effusion.
</draft>
<reflection>
kept: pleural effusion - re-checked the right base, meniscus confirmed.
</reflection>
</think>
<report>
Findings: Normal heart size. Small right pleural effusion. Possible left apical pneumothorax. No consolidation. Impression: Small right pleural effusion.
</report>"""
