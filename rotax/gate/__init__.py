"""`rotax gate`: the directional QA gate for a fine-tuned model.

Given a base and a tuned checkpoint and a probe the tuning may have hurt, the gate

1. scores both on the probe (:mod:`rotax.gate.probes`, :mod:`rotax.gate.scoring`): answer
   likelihood (mean per-token NLL of a reference answer), exact match of the greedy answer, or
   GeneralPoints accuracy for the built-in ``general-points:ood`` / ``general-points:id``;
2. diagnoses which layers × module types moved beyond a matched-norm random change
   (:mod:`rotax.gate.diagnosis`);
3. searches restoration operators (layer resets, UV merges, per-module resets) under a time
   budget on the probe's *selection* half (:mod:`rotax.gate.search`);
4. decides ``reset`` / ``rl`` / ``none`` from intervals on the *report* half
   (:mod:`rotax.gate.decision`), and writes ``gate.json``, ``gate.md``, ``gate.html`` and the
   repaired HF directory (:mod:`rotax.gate.report`, :mod:`rotax.gate.pipeline`).

The study's auto-select stage runs the same search and decision on its probe hands.
"""
