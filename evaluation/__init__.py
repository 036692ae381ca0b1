"""`loramem eval`: the paper's experiments and metrics, run through the system.

Nothing here trains or generates in process: every experiment ingests through the gateway
(`POST /facts`, `/documents`, `/merges`) and asks through it (`/v1/chat/completions`),
each run in its own tenant (`eval-<experiment>[-<part>]-<run_id>`) with explicit module
names (`<name>-<run_id>`), so runs on one system do not interfere.

Output, in `--out` (default `eval-results/<experiment>/`): `results.json`, `report.md`
(the markdown table) and one PNG per figure.

`results.json`, every experiment:
- `experiment`, `command`, `flags` (all CLI flags), `gateway`, `tenant`, `run_id`,
  `seconds` (wall time of the run);
- `skipped`: `[{"arm", "reason"}]`, arms the gateway could not run (a knob or endpoint
  it refused, or ICL prompts longer than the engine's context). Never faked.

Module experiments (`capacity`, `formats`, `variants`, `targets`, `multi-module`; PhoneBook
facts, recall gate 0 so a point is published as learnt):
- a point / arm row: `arm`, `module`, `facts`, `training` (the job's overrides), `job`
  (`status`, `version`, `recall` = the worker's own recall check, `steps`, `loss`,
  `train_seconds`, `error`), and, once published, the served scores asked with
  `model=<module>`: `questions`, `exact_match` (0-1, answer's digits == the number's
  digits), `strict_match` (0-1, the number verbatim in the answer), `answered_by_module`,
  `answered_by_expected_module` (0-1), `request_errors`, `examples`.
- `capacity`: `points` (rows above) and `ranks`: `[{"rank", "trainable_parameters",
  "exact_match_by_facts": {count: em}, "capacity": {"0.9"|"0.95"|"1.0": largest count tried
  whose exact match reached it}, "facts_per_million_parameters": {same keys}}]`. With
  `--reuse`, points of the run already in `--out` (same facts and knobs) are kept as
  they are, module names included, and only the others are trained.
- `formats` / `variants` / `targets`: `knob` (the training override varied) and `arms`.
- `multi-module`: `arms` (`one big module (oracle)`, `<k> small (oracle)`,
  `<k> small (model=auto)`, `merged (<combination>)`, each with `questions`, `rank`,
  `exact_match`, `strict_match`, `answered_by_expected_module`) and `jobs`.

Data-set evaluations (`phonebook`, `counterfact`, `paperqa`): `jobs` (the ingest job and
every module of the tenant with its `active_version`, null where its job failed, e.g. a
split-off module that stayed below the gate) and `arms`, one per answer arm: `base`,
`icl` (all facts in the system prompt), `rag`, `lora` (model=auto), `hybrid` (model=auto):
- phonebook: `exact_match`, `strict_match`, `answered_by_module` (0-1).
- counterfact: `efficacy` (0-1, share of edits where the arm gives the new target a higher
  log-probability than the base model's own value (its greedy continuation of the
  prompt in the same assistant turn, cut to as many words as the new target), read from vLLM's
  `prompt_logprobs`), `efficacy_scored` (edits where both could be scored),
  `contains_target` (0-1, the new target in the greedy answer), `answered_by_module`;
  top level `base_already_says_new`.
- paperqa: `bleu` (sacrebleu corpus BLEU, 0-100), `rouge_l` (mean F, 0-1), `judge_score`
  (mean 0-10 over parsed verdicts), `judge_parse_failures` (count); top level `judge`
  (`url`, `model`, `own_engine`, `caveat`).

`read-your-writes` (evaluation/read_your_writes.py): `sets`, per data set `facts`,
`edits`, `modules` and `phases` (`add`, `edit`), each with `first_right_s` (seconds from
sending the POST or the first PUT to the first right `model=auto` answer, null if none in
120 s), `first_right_tries`, `first_right_answer_s` (the right answer's own request),
`jobs` and `arms` (`rag`, `hybrid`, `off` asked while the
jobs trained, then `published`): `right`, `old_value` (edits: the old value answered),
`pending_share` (answered as `pending`), `jobs_published_after`, `request_errors`.

`span` (evaluation/span.py): `data` (the PhoneBook file and rows, or "generated"),
`modules` (name, facts, job), `merged` (the merged module, or null) and `arms` (`off`,
`merged`, `wording`, `compose`, `compose-hybrid`, `context`, `rag`, `hybrid`, `oracle`),
each with `pairs` and `singles` (null where not asked): `asked`, `all` (answers holding
every number), `share`, `numbers`, `spanned` (answers marked `span`), `request_errors`
and `answers` (each question, its numbers, the answer, `found`, the outcome).
"""
