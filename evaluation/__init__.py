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
`icl` (all facts in the system prompt), `rag`, `lora` (model=auto), `hybrid` (model=auto);
`rag@0.45`, `hybrid@0.45`: the mode with the request's own context threshold:
- phonebook: `exact_match`, `strict_match`, `answered_by_module` (0-1).
- counterfact: `efficacy` (0-1, share of edits where the arm gives the new target a higher
  log-probability than the base model's own value (its greedy continuation of the
  prompt in the same assistant turn, cut to as many words as the new target), read from vLLM's
  `prompt_logprobs`), `efficacy_scored` (edits where both could be scored),
  `contains_target` (0-1, the new target in the greedy answer), `answered_by_module`,
  `generalization` (0-1, the new target in the answer to the edit asked as a question of
  its relation, evaluation/counterfact_relations.py) over `generalization_asked` edits,
  `per_edit`; every arm but `base` has `locality`: `prompts` (an edit's template filled
  with a subject no edit file names), `same_as_base` (0-1, the answer exactly the base
  model's, greedy, same max tokens), `routed_to_base` (0-1, header `x-loramem-module`),
  `routed_to_a_module`, `same_when_routed_to_a_module`, `same_when_routed_to_base`,
  `outcomes`, `changed_examples`, `routes`. Top level `file`, `base_already_says_new`,
  and `ingest` instead of `jobs`: `facts`, `batches` (posted `--batch` at a time),
  `post_seconds`, `post_to_published_seconds`, `jobs`, `modules`.
- paperqa: `bleu` (sacrebleu corpus BLEU, 0-100), `rouge_l` (mean F, 0-1), `judge_score`
  (mean 0-10 over parsed verdicts), `judge_parse_failures` (count); each the mean over
  `runs` (`--runs`: the whole run repeated into a fresh tenant, training seed + 1 each
  time), with `bleu_spread` and `rouge_l_spread` (max - min over the runs); top level
  `runs` (each run's `seed`, `jobs`, `modules` and `arms`), `references` (answers no
  model writes, scored alike: the question itself, the posted sentence nearest the
  question by the router's embedder, the sentence nearest the reference by ROUGE-L) and
  `judge` (`url`, `model`, `own_engine`, `caveat`; null with `--no-judge`).

`phonebook-scale` (evaluation/phonebook_scale.py): `--count` PhoneBook rows posted in
batches of `--batch`, one `POST /facts` each (no module named), the next as soon as the
last is accepted; then each fact's stored question, and its five paraphrases if it is in
the `--paraphrases` share (drawn by the fact's text), via `model=auto`. With
`--ask-while-training` each fact is asked once its module serves a version, 100 facts a
round, while the rest trains; `--wait-s` stops waiting for training, and the facts not
yet published are asked anyway (answered from context, `pending`).
- `ingest`: `facts`, `batch`, `seconds` (first POST -> every batch job finished and every
  module serving a version, or `--wait-s` ran out), `facts_published` (in a module serving
  a version then), `facts_per_hour` (of those), `all_published`, `asked_while_training`,
  `batches` (`batch`, `facts`, `job_id`, `module` (the POST's: a new module or a delta),
  `posted_s`, `finished_s` (since the first POST; null if unfinished), `job` (as above),
  `split_into`).
- `modules`: `at_end` / `at_end_by_kind` (the registry at the end, by `made_as`: module,
  delta, split), `seen` / `seen_by_kind` (also the POSTs' and splits' modules since
  gone), `deltas_consolidated` (deltas seen, no longer in the registry),
  `unpublished_at_end`.
- `kinds`: per question kind (`stored`, `paraphrase`): `questions`, `exact_match`,
  `target` (0.95, 0.90), `met`, `router_top1` (answered by the module holding the fact,
  read from `GET /facts` before and after asking), `answered_by_module`,
  `answered_pending`, `request_errors`.
- `per_module`: `module`, `made_as`, `facts`, `active_version`, `gate_recall` (the worker's
  own check at publish), `stored_exact_match`, `paraphrase_exact_match`, `router_top1`.
- `paraphrased_facts`, `moved_while_asked` (facts a consolidation moved while they were
  asked), `examples`.

`read-your-writes` (evaluation/read_your_writes.py): `sets`, per data set `facts`,
`edits`, `modules` and `phases` (`add`, `edit`), each with `first_right_s` (seconds from
sending the POST or the first PUT to the first right `model=auto` answer, null if none in
120 s), `first_right_tries`, `first_right_answer_s` (the right answer's own request),
`jobs` and `arms` (`rag`, `hybrid`, `off` asked while the
jobs trained, then `published`): `right`, `old_value` (edits: the old value answered),
`pending_share` (answered as `pending`), `jobs_published_after`, `request_errors`.

`ingest-held` (evaluation/ingest_held.py; no engine needed): `fill`, `new_facts`,
`target_ratio` (1.5), `baseline_held` (the first published row's facts held: 0 when
`--held` starts with it), `load_average` (`start`, `end`: the machine's 1/5/15-minute load)
and `rows`, one per `--held` count in its own tenant: `held`, `fill_seconds` (not timed
against anything), `new_facts`, `seconds` (POST -> published or failed), `steps`,
`facts_trained` (the job's own count: the new facts alone when they went into a delta),
`module` (the job's), `tenant_facts` (facts the tenant holds afterwards), `load_1m` (at
the row's end), `job` (as for module experiments), `vs_baseline` (seconds / the baseline
row's; null unless published) and `within_target`. A held count whose fill failed is
listed in `skipped`.

`span` (evaluation/span.py): `data` (the PhoneBook file and rows, or "generated"),
`modules` (name, facts, job), `merged` (the merged module, or null) and `arms` (`off`,
`merged`, `wording`, `compose`, `compose-hybrid`, `context`, `rag`, `hybrid`, `oracle`),
each with `pairs` and `singles` (null where not asked): `asked`, `all` (answers holding
every number), `share`, `numbers`, `spanned` (answers marked `span`), `request_errors`
and `answers` (each question, its numbers, the answer, `found`, the outcome).

`subject` (evaluation/subject.py; no gateway, no engine): `arms` (`off`, then `on` or one
`on, <= N words` per `--max-words`) and `rows`, one per data set, question kind and arm:
`data` (`counterfact`, `phonebook`, `paperqa`), `kind` (`edit prompt`, `question form`,
`locality`, `locality question form`; `stored`, `paraphrase`, `surname`; `question`),
`arm`, `questions`, `wanted` (`its module` or `base`), `right` (share routed where it
must go), `to_base`, `outcomes` (counts of the router's outcomes); `misses`, per data
set and arm, up to ten questions routed where they must not go, with the fact that drew
them and its score.
"""
