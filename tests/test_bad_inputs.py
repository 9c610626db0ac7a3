"""A catalogue of bad input, kept as data: every subcommand, spec files, data files, flags, the reward function's
configuration and HTTP bodies, each refused in one line that names the offending flag, file, line or field.

One line per case: `command | arguments | fragment`. The arguments are shell-quoted; `{base}` is the command's valid
arguments (BASE: the bad one given after it wins), `{d}` the catalogue's folder of inputs (`bad`), `{bert}` a tiny
backbone, `{reward_func}` the `.py` reward function. For a command the test asserts exit code 2, one line on stderr
beginning `moslim-openrlhf <command>: error:` and holding the fragment, no traceback, and nothing new in the folder
(no output left as if the run had succeeded). The commands run in this process through `moslim_plugin.cli.main` and
fail before any model loads, except where a line names a model that is broken; `train_ppo_ray`'s lines run in one
subprocess (the launcher patches OpenRLHF for the rest of its process), `reward-func` and `http` lines have their own
runners below, and a few lines run again through the installed console script (CONSOLE_SCRIPT_LINES). A new flag's
cases are new lines here.
"""

import json
import os
import shlex
import socket
import subprocess
import sys

import pytest

from moslim_plugin.cli import main

BASE = {
    "prepare-prompts": "--data.dataset {d}/prompts.txt --moslim.spec hh --moslim.output {d}/out/prompts.jsonl",
    "prepare-ratings": "--data.dataset {d}/rated.jsonl --moslim.format generic --moslim.spec hh "
    "--moslim.output {d}/out/ratings.jsonl",
    "train-rm": "--model.model_name_or_path {bert} --moslim.spec hh --data.dataset {d}/rows.jsonl "
    "--ckpt.output_dir {d}/out/rm --ckpt.path {d}/out/ckpt --train.batch_size 2 --train.micro_batch_size 1 "
    "--moslim.eval_ratio 0.5 --data.max_len 32",
    "evaluate-rm": "--model {d}/rm --data.dataset {d}/rows.jsonl --output_dir {d}/out/eval-rm --data.max_len 64",
    "evaluate": "--actor.model_name_or_path {d}/no-policy --eval.output_dir {d}/out/evaluate",
    "screen": "--actor.model_name_or_path {d}/no-policy --screen.output_dir {d}/out/screen",
    "demo": "--quick --out {d}/out/demo",
    # A taken port: a line whose bad input were not refused would end at "cannot listen", never serve.
    "serve-reward": "--reward.model_name_or_path {d}/rm --moslim.max_length 128 --server.port {taken_port}",
}

CATALOGUE = r"""
# --- spec files (through prepare-prompts, and the commands that read a spec first) ---------------------------------
prepare-prompts | {base} --moslim.spec {d}/specs/missing.yaml | {d}/specs/missing.yaml: no such spec file
prepare-prompts | {base} --moslim.spec {d}/specs/broken.yaml | {d}/specs/broken.yaml: not valid YAML
prepare-prompts | {base} --moslim.spec {d}/specs/broken.json | {d}/specs/broken.json: not valid JSON
prepare-prompts | {base} --moslim.spec {d}/specs/spec.toml | unknown spec file type '.toml'
prepare-prompts | {base} --moslim.spec {d}/specs/latin1.yaml | latin1.yaml: not UTF-8 text (line 4
prepare-prompts | {base} --moslim.spec {d}/specs/big.yaml | big.yaml: 1048625 bytes, more than a spec may hold (1048576 bytes)
prepare-prompts | {base} --moslim.spec {d}/specs/aliases.yaml | YAML aliases (*name) are not allowed in a spec
prepare-prompts | {base} --moslim.spec {d}/specs/levels1.yaml | field 'levels': expected an integer in [2, 32], got 1
prepare-prompts | {base} --moslim.spec {d}/specs/levels33.yaml | field 'levels': expected an integer in [2, 32], got 33
prepare-prompts | {base} --moslim.spec {d}/specs/levels_huge.yaml | expected an integer in [2, 32], got 1000000000000
prepare-prompts | {base} --moslim.spec {d}/specs/levels_text.yaml | field 'levels': expected an integer in [2, 32], got '5'
prepare-prompts | {base} --moslim.spec {d}/specs/levels_float.yaml | field 'levels': expected an integer in [2, 32], got 2.5
prepare-prompts | {base} --moslim.spec {d}/specs/many.yaml | field 'objectives': expected a list of 1 to 32, got 33 objectives
prepare-prompts | {base} --moslim.spec {d}/specs/none.yaml | field 'objectives': expected a list of 1 to 32, got []
prepare-prompts | {base} --moslim.spec {d}/specs/list.yaml | expected a mapping with key 'objectives', got list
prepare-prompts | {base} --moslim.spec {d}/specs/toplevel.yaml | unknown top-level key(s) ['extra']
prepare-prompts | {base} --moslim.spec {d}/specs/dupe_name.yaml | duplicate name(s) ['a']
prepare-prompts | {base} --moslim.spec {d}/specs/dupe_key.yaml | duplicate key(s) ['levels']
prepare-prompts | {base} --moslim.spec {d}/specs/unknown_field.yaml | unknown field(s) ['colour']
prepare-prompts | {base} --moslim.spec {d}/specs/bad_name.yaml | field 'name': expected an identifier like 'helpfulness', got 'a b'
prepare-prompts | {base} --moslim.spec {d}/specs/no_levels.yaml | objectives[0] ('a'): missing field 'levels'
prepare-prompts | {base} --moslim.spec {d}/specs/level_names.yaml | field 'level_names': expected 3 names
prepare-prompts | {base} --moslim.spec {d}/specs/delimiter.yaml | field 'level_names[1]': 'b;c' contains [';']
prepare-prompts | {base} --moslim.spec {d}/specs/placeholder.yaml | field 'phrasing': unknown placeholder(s) ['tone']
prepare-prompts | {base} --moslim.spec {d}/specs/sentence.yaml | field 'instructions[1]': expected one non-empty sentence
prepare-prompts | {base} --moslim.spec {d}/specs/bins.yaml | field 'rating.bins': expected 1 strictly ascending numbers
prepare-prompts | {base} --moslim.spec {d}/specs/nan_bins.yaml | field 'rating.bins': expected 1 strictly ascending numbers
prepare-ratings | {base} --moslim.spec {d}/specs/levels33.yaml | field 'levels': expected an integer in [2, 32], got 33
train-rm | {base} --moslim.spec {d}/specs/latin1.yaml | latin1.yaml: not UTF-8 text
evaluate | {base} --moslim.spec {d}/specs/many.yaml | expected a list of 1 to 32, got 33 objectives
screen | {base} --moslim.spec {d}/specs/broken.json | broken.json: not valid JSON

# --- rule objectives: a bad rule is refused where the spec is read; a spec file is a reward only with rules only ----
prepare-prompts | {base} --moslim.spec {d}/specs/rule_unknown.yaml | objectives[0] ('format'): field 'rule': unknown rule 'bullet_list'
prepare-prompts | {base} --moslim.spec {d}/specs/rule_bands.yaml | ('length'): field 'rule': rule 'word_count': 'bands': expected 2 strictly ascending word counts
prepare-prompts | {base} --moslim.spec {d}/specs/rule_regex.yaml | ('cites'): field 'rule': rule 'regex': 'pattern': '(unclosed' is not a valid regular expression
prepare-prompts | {base} --moslim.spec {d}/specs/rule_rating.yaml | a rule objective is checked exactly and has no rating
prepare-ratings | {base} --moslim.spec {d}/specs/rules.yaml | rules.yaml: every objective is a rule
train-rm | {base} --moslim.spec {d}/specs/rules.yaml | rules.yaml: every objective is a rule, so there is no reward-model head to build or train
evaluate-rm | {base} --model {d}/specs/mixed.yaml | a spec file is a reward only when every objective is a rule, but ['helpful'] are learned
serve-reward | {base} --reward.model_name_or_path {d}/specs/rule_unknown.yaml | ('format'): field 'rule': unknown rule 'bullet_list'
serve-reward | {base} --reward.model_name_or_path {d}/specs/rule_broken.yaml | rule objective 'format' ({'name': 'helpers_reward:returns', 'value': 5}) fails on the plain response
serve-reward | {base} --reward.model_name_or_path {d}/specs/mixed.yaml | a spec file is a reward only when every objective is a rule, but ['helpful'] are learned
demo | {base} --demo.rules formality | rules ['formality']: a rule can score ['length', 'format'] here
train_ppo_ray | --reward.model_name_or_path {d}/specs/rule_regex.yaml | ('cites'): field 'rule': rule 'regex': 'pattern': '(unclosed' is not a valid
train_ppo_ray | --reward.model_name_or_path {d}/specs/mixed.yaml | ['helpful'] are learned: pass the reward-model checkpoint trained for it

# --- prompt and rating files --------------------------------------------------------------------------------------
prepare-prompts | {base} --data.dataset {d}/data/bad.jsonl | {d}/data/bad.jsonl: line 2 is not valid JSON
prepare-prompts | {base} --data.dataset {d}/data/notrow.jsonl | notrow.jsonl: line 1: expected a JSON object
prepare-prompts | {base} --data.dataset {d}/data/deep.jsonl | deep.jsonl: line 1 is nested too deeply to be a row of data
prepare-prompts | {base} --data.dataset {d}/data/deep.json | deep.json: nested too deeply to be rows of data
prepare-prompts | {base} --data.dataset {d}/data/empty.txt | empty.txt: the file is empty
prepare-prompts | {base} --data.dataset {d}/data/empty.jsonl | empty.jsonl: the file is empty
prepare-prompts | {base} --data.dataset {d}/data/binary.txt | binary.txt: cannot be read (UnicodeDecodeError
prepare-prompts | {base} --data.dataset {d}/data/cut.jsonl.gz | cut.jsonl.gz: cannot be read
prepare-prompts | {base} --data.dataset {d}/data/missing.jsonl | --data.dataset: no such file '{d}/data/missing.jsonl'
prepare-prompts | {base} --data.dataset {d}/data/no-data | --data.dataset '{d}/data/no-data': cannot be read
prepare-prompts | {base} --data.dataset {d}/data/prompts_noinput.jsonl | row 0: no input column 'input'
prepare-prompts | {base} --data.dataset {d}/data/prompts_emptyinput.jsonl | row 0: 'input' must be a non-empty string
prepare-prompts | {base} --data.dataset {d}/data/prompts_labelled.jsonl | row 0: column 'label' already holds a non-MOSLIM label
prepare-prompts | {base} --data.dataset {d}/data/prompts_numbers.jsonl | row 0: 'input' must be a non-empty string or chat messages, got 42
prepare-ratings | {base} --data.dataset {d}/data/notrow.jsonl | notrow.jsonl: line 1: expected a JSON object
prepare-ratings | {base} --data.dataset {d}/data/deep.jsonl | deep.jsonl: line 1 is nested too deeply
prepare-ratings | {base} --data.dataset {d}/data/no-data | {d}/data/no-data: cannot be read as a dataset
prepare-ratings | {base} --data.dataset {d}/data/missing.jsonl | {d}/data/missing.jsonl: no such file or folder
prepare-ratings | {base} --data.dataset {d}/data/unrated.jsonl | unrated.jsonl: rating path(s) found in no row
prepare-ratings | {base} --data.dataset {d}/data/rated_out_of_range.jsonl | rated_out_of_range.jsonl
prepare-ratings | {base} --data.dataset {d}/data/cut.jsonl.gz | cut.jsonl.gz: cannot be read

# --- output locations, checked before any work ----------------------------------------------------------------------
prepare-prompts | {base} --moslim.output {d}/afile/out.jsonl | --moslim.output '{d}/afile/out.jsonl': cannot be written ({d}/afile is a file
prepare-prompts | {base} --moslim.output {d}/afile/folder | --moslim.output '{d}/afile/folder': cannot be written
prepare-prompts | {base} --moslim.output {d}/afile | --moslim.output '{d}/afile': a file, not a folder
prepare-prompts | {base} --moslim.output /sys/moslim.jsonl | --moslim.output '/sys/moslim.jsonl': cannot be written in /sys
prepare-ratings | {base} --moslim.output {d}/data | --moslim.output '{d}/data': a folder, not a file
prepare-ratings | {base} --moslim.output {d}/afile/r.jsonl | ({d}/afile is a file, not a folder)
prepare-ratings | {base} --moslim.output /sys/r.jsonl | --moslim.output '/sys/r.jsonl': cannot be written in /sys
evaluate-rm | {base} --output_dir {d}/afile | --output_dir '{d}/afile': a file, not a folder
evaluate-rm | {base} --output_dir /sys/eval | --output_dir '/sys/eval': cannot be written in /sys
evaluate | {base} --eval.output_dir {d}/afile | --eval.output_dir '{d}/afile': a file, not a folder
evaluate | {base} --eval.output_dir /sys/eval | --eval.output_dir '/sys/eval': cannot be written in /sys
screen | {base} --screen.output_dir {d}/afile/x | ({d}/afile is a file, not a folder)
screen | {base} --screen.output_dir /sys/screen | --screen.output_dir '/sys/screen': cannot be written in /sys
demo | {base} --out {d}/afile | --out '{d}/afile': a file, not a folder
demo | {base} --out /sys/demo | --out '/sys/demo': cannot be written in /sys
train-rm | {base} --ckpt.output_dir {d}/afile | --ckpt.output_dir '{d}/afile': a file, not a folder
train-rm | {base} --ckpt.output_dir /sys/rm | --ckpt.output_dir '/sys/rm': cannot be written in /sys
train-rm | {base} --ckpt.path /sys/ckpt --ckpt.save_steps 1 | --ckpt.path '/sys/ckpt': cannot be written in /sys
train-rm | {base} --ckpt.max_num -1 | argument --ckpt.max_num: expected an integer >= 0, got -1
train-rm | {base} --ckpt.output_dir {d}/rm | --ckpt.output_dir {d}/rm already holds a model (config.json)

# --- counts, limits and rates: finite, in range, integers where a count is meant -------------------------------------
prepare-prompts | {base} --data.max_samples -1 | argument --data.max_samples: expected an integer >= 1, got -1
prepare-prompts | {base} --data.max_samples 0 | argument --data.max_samples: expected an integer >= 1, got 0
prepare-prompts | {base} --data.max_samples 2.5 | argument --data.max_samples: expected an integer >= 1, got '2.5'
prepare-prompts | {base} --moslim.seed x | argument --moslim.seed: expected an integer, got 'x'
prepare-prompts | {base} --moslim.sampling fixed --moslim.fixed helpful=1,helpful=0 | --moslim.fixed 'helpful=1,helpful=0': 'helpful' is named twice
prepare-prompts | {base} --moslim.sampling fixed --moslim.fixed helpful=2 | --moslim.fixed: level 2 for 'helpful' is out of range
prepare-prompts | {base} --moslim.sampling fixed --moslim.fixed helpful=yes | --moslim.fixed 'helpful=yes': levels must be integers
prepare-prompts | {base} --moslim.sampling fixed --moslim.fixed tone=1 | --moslim.fixed: unknown objective 'tone'
prepare-prompts | {base} --moslim.sampling fixed | sampling mode 'fixed' needs targets
prepare-prompts | {base} --moslim.sampling column --moslim.columns helpful=a,helpful=b | --moslim.columns 'helpful=a,helpful=b': 'helpful' is named twice
prepare-prompts | {base} --moslim.sampling sometimes | argument --moslim.sampling: invalid choice: 'sometimes'
prepare-prompts | {base} --moslim.style prose | argument --moslim.style: invalid choice: 'prose'
train-rm | {base} --data.max_len 0 | argument --data.max_len: expected an integer >= 1, got 0
train-rm | {base} --data.max_samples -1 | argument --data.max_samples: expected an integer >= 1, got -1
train-rm | {base} --data.max_len 100000 | --data.max_len 100000 exceeds what the backbone {bert} can read
train-rm | {base} --train.max_epochs 0 | argument --train.max_epochs: expected an integer >= 1, got 0
train-rm | {base} --train.max_epochs -2 | argument --train.max_epochs: expected an integer >= 1, got -2
train-rm | {base} --train.max_steps 0 | argument --train.max_steps: expected -1 (use --train.max_epochs) or an integer >= 1
train-rm | {base} --adam.lr=-1e-4 | argument --adam.lr: expected a finite number > 0, got -1e-4
train-rm | {base} --adam.lr nan | argument --adam.lr: expected a finite number > 0, got nan
train-rm | {base} --adam.lr 0 | argument --adam.lr: expected a finite number > 0, got 0
train-rm | {base} --adam.betas 0.9 1.5 | argument --adam.betas: expected a number in [0, 1), got 1.5
train-rm | {base} --adam.eps 0 | argument --adam.eps: expected a finite number > 0, got 0
train-rm | {base} --adam.weight_decay -0.1 | argument --adam.weight_decay: expected a finite number >= 0, got -0.1
train-rm | {base} --lr_warmup_ratio 1.5 | argument --lr_warmup_ratio: expected a number in [0, 1], got 1.5
train-rm | {base} --min_lr_ratio -0.1 | argument --min_lr_ratio: expected a number in [0, 1], got -0.1
train-rm | {base} --max_norm nan | argument --max_norm: expected a finite number >= 0, got nan
train-rm | {base} --moslim.eval_ratio 1.5 | argument --moslim.eval_ratio: expected a number in (0, 1), got 1.5
train-rm | {base} --moslim.eval_ratio 0 | argument --moslim.eval_ratio: expected a number in (0, 1), got 0
train-rm | {base} --moslim.label_smoothing 1 | argument --moslim.label_smoothing: expected a number in [0, 1), got 1
train-rm | {base} --moslim.label_smoothing -0.5 | argument --moslim.label_smoothing: expected a number in [0, 1), got -0.5
train-rm | {base} --eval.patience -1 | argument --eval.patience: expected an integer >= 0, got -1
train-rm | {base} --eval.steps 0 | argument --eval.steps: expected -1 (every epoch) or an integer >= 1
train-rm | {base} --ds.lora.rank -1 | argument --ds.lora.rank: expected an integer >= 0, got -1
train-rm | {base} --ds.lora.dropout 1 | argument --ds.lora.dropout: expected a number in [0, 1), got 1
train-rm | {base} --ds.zero_stage 4 | argument --ds.zero_stage: expected an integer in [0, 3], got 4
train-rm | {base} --logger.logging_steps 0 | argument --logger.logging_steps: expected an integer >= 1, got 0
train-rm | {base} --model.model_name_or_path {d}/no-model | --model.model_name_or_path '{d}/no-model': no tokenizer
train-rm | {base} --model.model_name_or_path {d}/rm | backbone '{d}/rm' is a MOSLIM reward-model checkpoint
train-rm | {base} --train.batch_size 0 | argument --train.batch_size: expected an integer >= 1, got 0
train-rm | {base} --train.batch_size eight | argument --train.batch_size: expected an integer >= 1, got 'eight'
train-rm | {base} --train.micro_batch_size 0 | argument --train.micro_batch_size: expected an integer >= 1, got 0
train-rm | {base} --train.batch_size 3 --train.micro_batch_size 2 | --train.batch_size 3 is not a multiple of --train.micro_batch_size 2
train-rm | {base} --lr_scheduler cosine_typo | argument --lr_scheduler: invalid choice: 'cosine_typo'
train-rm | {base} --moslim.select accuracy | argument --moslim.select: invalid choice: 'accuracy'
evaluate-rm | {base} --data.max_len 0 | argument --data.max_len: expected an integer >= 1, got 0
evaluate-rm | {base} --data.max_len 4096 | --data.max_len 4096 exceeds what the reward model {d}/rm can read
evaluate-rm | {base} --micro_batch_size -1 | argument --micro_batch_size: expected an integer >= 1, got -1
evaluate-rm | {base} --threads 0 | argument --threads: expected an integer >= 1, got 0
evaluate-rm | {base} --moslim.request {bad | --moslim.request '{bad': expected 'objective=level,...' or a JSON object
evaluate-rm | {base} --model {d}/corrupt-rm | {d}/corrupt-rm: the weights cannot be read
evaluate-rm | {base} --data.dataset {d}/data/rows_badlevel.jsonl | rows_badlevel.jsonl: row 0: labels: level 7 for 'helpful' is out of range
evaluate-rm | {base} --data.dataset {d}/data/empty.jsonl | empty.jsonl
evaluate | {base} --eval.max_samples 0 | argument --eval.max_samples: expected an integer >= 1, got 0
evaluate | {base} --eval.n_samples_per_prompt -1 | argument --eval.n_samples_per_prompt: expected an integer >= 0, got -1
evaluate | {base} --rollout.max_new_tokens 0 | argument --rollout.max_new_tokens: expected an integer >= 1, got 0
evaluate | {base} --rollout.temperature -1 | argument --rollout.temperature: expected a finite number >= 0, got -1
evaluate | {base} --rollout.temperature nan | argument --rollout.temperature: expected a finite number >= 0, got nan
evaluate | {base} --rollout.temperature 0 | --rollout.temperature 0.0: the sampled evaluation needs > 0
evaluate | {base} --rollout.micro_batch_size 0 | argument --rollout.micro_batch_size: expected an integer >= 1, got 0
evaluate | {base} --eval.dataset {d}/data/missing.txt | {d}/data/missing.txt: no such file
evaluate | {base} --eval.dataset {d}/data/empty.txt | empty.txt: the file is empty
evaluate | {base} --eval.dataset {d}/data/notrow.jsonl | notrow.jsonl: line 1: expected a JSON object
evaluate | {base} --eval.dataset {d}/data/prompts_noinput.jsonl | prompts_noinput.jsonl: row 0: expected a non-empty 'input' string
evaluate | {base} --reward.model_name_or_path {d}/no-rm | reward model '{d}/no-rm': not a MOSLIM checkpoint folder
evaluate | {base} --reward.model_name_or_path {d}/rm --moslim.spec helpsteer | reward model {d}/rm: objective spec mismatch
evaluate | --actor.model_name_or_path {d}/bad-config --eval.output_dir {d}/out/evaluate | policy '{d}/bad-config': cannot be loaded as a causal LM
evaluate | {base} --actor.model_name_or_path {d}/no-policy | policy '{d}/no-policy': not a model
screen | {base} --eval.n_samples_per_prompt 0 | argument --eval.n_samples_per_prompt: expected an integer >= 1, got 0
screen | {base} --eval.max_samples -3 | argument --eval.max_samples: expected an integer >= 1, got -3
screen | {base} --rollout.temperature 0 | argument --rollout.temperature: expected a finite number > 0, got 0
screen | {base} --rollout.temperature inf | argument --rollout.temperature: expected a finite number > 0, got inf
screen | {base} --screen.min_gap 1.5 | argument --screen.min_gap: expected a number in [-1, 1], got 1.5
screen | {base} --screen.min_share nan | argument --screen.min_share: expected a number in [0, 1], got nan
screen | {base} --screen.min_share 2 | argument --screen.min_share: expected a number in [0, 1], got 2
screen | {base} --threads -1 | argument --threads: expected an integer >= 1, got -1
screen | {base} --screen.oracle_objectives tone | got ['tone']
screen | {base} --eval.dataset {d}/data/binary.txt | {d}/data/binary.txt: cannot be read (UnicodeDecodeError
demo | {base} --demo.rl_steps 0 | argument --demo.rl_steps: expected an integer >= 1, got 0
demo | {base} --demo.samples -5 | argument --demo.samples: expected an integer >= 1, got -5
demo | {base} --demo.eval_samples -1 | argument --demo.eval_samples: expected an integer >= 0, got -1
demo | {base} --demo.curve_every -1 | argument --demo.curve_every: expected an integer >= 0, got -1
demo | {base} --demo.curve_prompts 0 | argument --demo.curve_prompts: expected an integer >= 1, got 0
demo | {base} --moslim.sampling pairs | argument --moslim.sampling: invalid choice: 'pairs'
demo | {base} --seeds 1 x | argument --seeds: expected an integer, got 'x'
demo | {base} --seeds 2 1 2 | --seeds 2 1 2: each seed once
demo | {base} --moslim.rm_lr 0 | argument --moslim.rm_lr: expected a finite number > 0, got 0
demo | {base} --actor.adam.lr nan | argument --actor.adam.lr: expected a finite number > 0, got nan
demo | {base} --actor.adam.lr -1 | argument --actor.adam.lr: expected a finite number > 0, got -1
demo | {base} --actor.eps_clip 0 | argument --actor.eps_clip: expected a finite number > 0, got 0
demo | {base} --algo.kl.init_coef -0.1 | argument --algo.kl.init_coef: expected a finite number >= 0, got -0.1
demo | {base} --algo.advantage.gamma 1.5 | argument --algo.advantage.gamma: expected a number in [0, 1], got 1.5
demo | {base} --rollout.temperature 0 | argument --rollout.temperature: expected a finite number > 0, got 0
demo | {base} --rollout.top_p 0 | argument --rollout.top_p: expected a number in (0, 1], got 0
demo | {base} --rollout.top_p 1.5 | argument --rollout.top_p: expected a number in (0, 1], got 1.5
demo | {base} --rollout.n_samples_per_prompt 0 | argument --rollout.n_samples_per_prompt: expected an integer >= 1, got 0
demo | {base} --rollout.batch_size 0 | argument --rollout.batch_size: expected an integer >= 1, got 0
demo | {base} --train.max_epochs 0 | argument --train.max_epochs: expected an integer >= 1, got 0
demo | {base} --moslim.trainable_layers 0 | argument --moslim.trainable_layers: expected -1 (all) or an integer >= 1
demo | {base} --moslim.generate_batch_size 0 | argument --moslim.generate_batch_size: expected an integer >= 1, got 0
demo | {base} --threads 0 | argument --threads: expected an integer >= 1, got 0
demo | {base} --moslim.mapping_kwargs '{"zzz": 1}' | mapping 'moslim' has no keyword(s) ['zzz']
demo | {base} --moslim.mapping_kwargs '{"eps": 1e9}' | the keyword(s) ['eps'] cause it
demo | {base} --moslim.mapping_kwargs '[1]' | mapping kwargs must be a JSON object, got [1]
demo | {base} --actor.max_norm -1 | argument --actor.max_norm: expected a finite number >= 0, got -1
demo | {base} --rollout.temperature nan | argument --rollout.temperature: expected a finite number > 0, got nan
demo | {base} --actor.adam.betas 0.9 1 | argument --actor.adam.betas: expected a number in [0, 1), got 1

# --- serve-reward: the reward flags (train_ppo_ray's too) and the server's --------------------------------------------
serve-reward | {base} --moslim.max_length 200 | --moslim.max_length 200 exceeds what the reward model {d}/rm can read (its backbone's max_position_embeddings 128)
serve-reward | {base} --moslim.max_length 4 | argument --moslim.max_length: expected an integer >= 8, got 4
serve-reward | {base} --moslim.max_length 1e3 | argument --moslim.max_length: expected an integer >= 8, got '1e3'
serve-reward | {base} --moslim.batch_size 0 | argument --moslim.batch_size: expected an integer >= 1, got 0
serve-reward | {base} --moslim.fallback_reward nan | argument --moslim.fallback_reward: expected a finite number, got nan
serve-reward | {base} --moslim.fallback_reward=-inf | argument --moslim.fallback_reward: expected a finite number, got -inf
serve-reward | {base} --moslim.max_error_share 1 | argument --moslim.max_error_share: expected a number in [0, 1), got 1
serve-reward | {base} --moslim.max_error_share -0.1 | argument --moslim.max_error_share: expected a number in [0, 1), got -0.1
serve-reward | {base} --moslim.error_window 0 | argument --moslim.error_window: expected an integer >= 1, got 0
serve-reward | {base} --moslim.dtype int8 | argument --moslim.dtype: invalid choice: 'int8'
serve-reward | {base} --moslim.device gpu0 | --moslim.device 'gpu0': not a torch device
serve-reward | {base} --moslim.template gemma | --moslim.template 'gemma': unknown chat template 'gemma'
serve-reward | {base} --moslim.mapping paper | unknown mapping 'paper'
serve-reward | {base} --moslim.mapping no_module:fn | mapping 'no_module:fn': cannot import module 'no_module'
serve-reward | {base} --moslim.mapping_kwargs '{"norm": "dataset "}' | mapping keyword 'norm' must be one of
serve-reward | {base} --moslim.mapping_kwargs '{"eps": -1}' | mapping keyword 'eps' must be a number in (0, inf), got -1
serve-reward | {base} --moslim.mapping_kwargs '{"eps": 1e9}' | the keyword(s) ['eps'] cause it
serve-reward | {base} --moslim.mapping target_logprob --moslim.mapping_kwargs '{"min_prob": 0.95}' | the keyword(s) ['min_prob'] cause it
serve-reward | {base} --moslim.mapping_kwargs '{bad' | argument --moslim.mapping_kwargs: expected a JSON object, got '{bad'
serve-reward | {base} --server.port 0 | argument --server.port: expected an integer in [1, 65535], got 0
serve-reward | {base} --server.port 70000 | argument --server.port: expected an integer in [1, 65535], got 70000
serve-reward | {base} --server.port http | argument --server.port: expected an integer in [1, 65535], got 'http'
serve-reward | {base} --server.deadline_s nan | argument --server.deadline_s: expected a number in (0, 86400], got nan
serve-reward | {base} --server.deadline_s 0 | argument --server.deadline_s: expected a number in (0, 86400], got 0
serve-reward | {base} --server.max_body_mb 0 | argument --server.max_body_mb: expected a number in (0, 1024], got 0
serve-reward | {base} --server.max_body_mb -1 | argument --server.max_body_mb: expected a number in (0, 1024], got -1
serve-reward | {base} --server.max_wait_ms -5 | argument --server.max_wait_ms: expected a number in [0, 60000], got -5
serve-reward | {base} --server.max_batch_size 0 | argument --server.max_batch_size: expected an integer >= 1, got 0
serve-reward | {base} --server.chunk_size 0 | argument --server.chunk_size: expected an integer >= 1, got 0
serve-reward | {base} --server.max_samples -1 | argument --server.max_samples: expected an integer >= 1, got -1
serve-reward | {base} --server.max_queued_samples 0 | argument --server.max_queued_samples: expected an integer >= 1, got 0
serve-reward | {base} --server.log_level verbose | argument --server.log_level: invalid choice: 'verbose'
serve-reward | {base} --server.api_key short | --server.api_key: the key must be at least 16 printable characters
serve-reward | {base} --server.api_key_file {d}/keys/short | --server.api_key_file {d}/keys/short: the key must be at least 16
serve-reward | {base} --server.api_key_file {d}/keys/missing | --server.api_key_file {d}/keys/missing: cannot be read
serve-reward | {base} --server.api_key_file {d}/keys/binary | --server.api_key_file {d}/keys/binary: cannot be read (UnicodeDecodeError
serve-reward | {base} --server.host no.such.host.invalid | --server.host no.such.host.invalid --server.port
serve-reward | {base} --server.host 127.0.0.1 | --server.host 127.0.0.1 --server.port {taken_port}: cannot listen
serve-reward | {base} --reward.model_name_or_path {d}/corrupt-rm | --server.port {taken_port}: cannot listen
serve-reward | {base} --reward.model_name_or_path {d}/no-rm | MOSLIM reward model checkpoint not found: '{d}/no-rm'
serve-reward | {base} --reward.model_name_or_path {d}/data | MOSLIM reward model checkpoint not found: '{d}/data'
serve-reward | {base} --reward.model_name_or_path {d}/bad-config | {d}/bad-config/config.json: not JSON
serve-reward | {base} --reward.model_name_or_path {d}/plain-config | {d}/plain-config is not a MOSLIM reward model
serve-reward | {base} --reward.model_name_or_path {d}/corrupt-rm --server.port {free_port} | corrupt-rm: the weights cannot be read

# --- train_ppo_ray's --moslim.* flags (one subprocess for all of them) --------------------------------------------------
train_ppo_ray | --moslim.max_length 0 | argument --moslim.max_length: expected an integer >= 8, got 0
train_ppo_ray | --moslim.error_window -1 | argument --moslim.error_window: expected an integer >= 1, got -1
train_ppo_ray | --moslim.fallback_reward nan | argument --moslim.fallback_reward: expected a finite number, got nan
train_ppo_ray | --moslim.max_error_share 2 | argument --moslim.max_error_share: expected a number in [0, 1), got 2
train_ppo_ray | --moslim.seed 1.5 | argument --moslim.seed: expected an integer, got '1.5'
train_ppo_ray | --moslim.mapping_kwargs '{bad' | argument --moslim.mapping_kwargs: expected a JSON object, got '{bad'
train_ppo_ray | --moslim.sampel uniform | unknown MOSLIM flag(s) ['--moslim.sampel']
train_ppo_ray | --actor.no_such_flag 1 | unrecognized arguments: --actor.no_such_flag 1
train_ppo_ray | --moslim.spec {d}/specs/broken.yaml --moslim.sampling uniform | {d}/specs/broken.yaml: not valid YAML
train_ppo_ray | --moslim.spec hh --moslim.sampling fixed --moslim.fixed helpful=yes | --moslim.fixed 'helpful=yes': levels must be integers
train_ppo_ray | --reward.model_name_or_path {d}/rm --moslim.max_length 128 --moslim.spec helpsteer | objective spec mismatch
train_ppo_ray | --moslim.spec {d}/specs/levels33.yaml --moslim.sampling uniform | field 'levels': expected an integer in [2, 32], got 33
train_ppo_ray | --moslim.spec hh --moslim.sampling fixed --moslim.fixed helpful=1,helpful=0 | 'helpful' is named twice
train_ppo_ray | --reward.model_name_or_path {d}/rm --moslim.max_length 200 | --moslim.max_length 200 exceeds what the reward model {d}/rm can read
train_ppo_ray | --reward.model_name_or_path {d}/rm --moslim.max_length 128 --moslim.fallback_reward 1 | ['--moslim.fallback_reward'] would do nothing with the reward model in-process
train_ppo_ray | --reward.model_name_or_path {d}/rm --moslim.max_length 128 --moslim.device gpu0 | --moslim.device 'gpu0': not a torch device
train_ppo_ray | --reward.model_name_or_path {d}/rm --reward.remote_url {reward_func} --moslim.max_length 128 --moslim.device gpu0 | --moslim.device 'gpu0': not a torch device
train_ppo_ray | --reward.model_name_or_path {d}/rm --reward.remote_url {reward_func} --moslim.max_length 200 | --moslim.max_length 200 exceeds what the reward model {d}/rm can read
train_ppo_ray | --reward.model_name_or_path {d}/rm --moslim.max_length 128 --moslim.mapping_kwargs '{"eps": 1e9}' | the keyword(s) ['eps'] cause it

# --- the .py reward function: its configuration as the job's env carries it (MOSLIM_REWARD_CONFIG) ----------------------
reward-func | {"rm_path": "{d}/rm", "max_length": 200} | --moslim.max_length 200 exceeds what the reward model {d}/rm can read
reward-func | {"rm_path": "{d}/rm", "max_length": 128, "error_window": 0} | --moslim.error_window 0: expected an integer >= 1
reward-func | {"rm_path": "{d}/rm", "max_length": 128, "max_error_share": NaN} | --moslim.max_error_share nan: expected a number in [0, 1)
reward-func | {"rm_path": "{d}/rm", "max_length": 128, "strict": "yes"} | --moslim.strict 'yes': expected a bool
reward-func | {"rm_path": "{d}/rm", "max_length": 128, "device": "gpu0"} | --moslim.device 'gpu0': not a torch device
reward-func | {"rm_path": "{d}/rm", "max_length": 128, "mapping_kwargs": {"eps": 1e9}} | the keyword(s) ['eps'] cause it
reward-func | {"rm_path": "{d}/rm", "max_length": 128, "colour": 1} | reward configuration: unknown field(s) ['colour']
reward-func | {"rm_path": "{d}/no-rm"} | MOSLIM reward model checkpoint not found: '{d}/no-rm'
reward-func | [1, 2] | reward configuration: unknown field(s) list
reward-func | {not json | MOSLIM_REWARD_CONFIG is not a reward configuration

# --- HTTP bodies sent to a running serve-reward: status, and what the error names ------------------------------------
http | {"query": ["x"]} | 400 expected lists 'query', 'prompts' and 'labels' (OpenRLHF's format); bad: ['prompts', 'labels']
http | {"query": "x", "prompts": ["p"], "labels": ["l"]} | 400 bad: ['query']
http | [1, 2, 3] | 400 bad: ['query', 'prompts', 'labels']
http | {nope | 400 request body is not JSON
http | {"query": [], "prompts": [], "labels": []} | 400 empty request: no sample to score
http | {"query": ["a", "b"], "prompts": ["p"], "labels": ["l"]} | 400 got 2 queries, 1 prompts and 1 labels
http | {nested20} | 400 request body nested deeper than 16 levels; OpenRLHF's requests have 6 at most
http | {deep} | 400 request body nested deeper than 16 levels
http | {big} | 413 request body over the server's limit of 262144 bytes (--server.max_body_mb)
http | {many} | 413 5 samples in one request, over the server's limit of 4 (--server.max_samples)
"""  # noqa: E501


def cases(command_filter):
    out = []
    for n, line in enumerate(CATALOGUE.strip().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        command, args, fragment = (part.strip() for part in line.split(" | ", 2))
        if command_filter(command):
            out.append(pytest.param(command, args, fragment, id=f"{n}-{command}"))
    return out


SPEC_FILES = {
    "broken.yaml": "objectives:\n  - name: a\n   levels: [\n",
    "broken.json": "{objectives: ",
    "spec.toml": "",
    "aliases.yaml": 'a: &a ["x", "x"]\nb: &b [*a, *a]\nobjectives: [{name: a, levels: 2}]\n',
    "levels1.yaml": "objectives: [{name: a, levels: 1}]\n",
    "levels33.yaml": "objectives: [{name: a, levels: 33}]\n",
    "levels_huge.yaml": "objectives: [{name: a, levels: 1000000000000}]\n",
    "levels_text.yaml": "objectives: [{name: a, levels: '5'}]\n",
    "levels_float.yaml": "objectives: [{name: a, levels: 2.5}]\n",
    "many.yaml": "objectives:\n" + "".join(f"  - {{name: o{i}, levels: 2}}\n" for i in range(33)),
    "none.yaml": "objectives: []\n",
    "list.yaml": "- objectives\n",
    "toplevel.yaml": "objectives: [{name: a, levels: 2}]\nextra: 1\n",
    "dupe_name.yaml": "objectives: [{name: a, levels: 2}, {name: a, levels: 3}]\n",
    "dupe_key.yaml": "objectives:\n  - name: a\n    levels: 2\n    levels: 3\n",
    "unknown_field.yaml": "objectives: [{name: a, levels: 2, colour: red}]\n",
    "bad_name.yaml": "objectives: [{name: a b, levels: 2}]\n",
    "no_levels.yaml": "objectives: [{name: a}]\n",
    "level_names.yaml": "objectives: [{name: a, levels: 3, level_names: [x, y]}]\n",
    "delimiter.yaml": "objectives: [{name: a, levels: 3, level_names: [a, 'b;c', d]}]\n",
    "placeholder.yaml": "objectives: [{name: a, levels: 2, phrasing: 'be {tone}'}]\n",
    "sentence.yaml": "objectives: [{name: a, levels: 2, instructions: [Be short., be long]}]\n",
    "bins.yaml": "objectives: [{name: a, levels: 2, rating: {path: a, bins: [1, 2]}}]\n",
    "nan_bins.yaml": "objectives: [{name: a, levels: 2, rating: {path: a, bins: [.nan]}}]\n",
    "rule_unknown.yaml": "objectives: [{name: format, levels: 2, rule: bullet_list}]\n",
    "rule_bands.yaml": "objectives: [{name: length, levels: 3, rule: {name: word_count, bands: [20]}}]\n",
    "rule_regex.yaml": "objectives: [{name: cites, levels: 2, rule: {name: regex, pattern: '(unclosed'}}]\n",
    "rule_rating.yaml": "objectives: [{name: format, levels: 2, rule: bulleted_list, rating: {path: f}}]\n",
    "rule_broken.yaml": "objectives: [{name: format, levels: 2, rule: {name: 'helpers_reward:returns', value: 5}}]\n",
    "rules.yaml": "objectives: [{name: format, levels: 2, rule: bulleted_list}]\n",
    "mixed.yaml": "objectives: [{name: helpful, levels: 2}, {name: format, levels: 2, rule: bulleted_list}]\n",
}


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_bert):
    """The catalogue's folder: a tiny MOSLIM checkpoint (hh spec, 128 positions) and a broken copy, valid inputs for
    each command's BASE, and one bad input of each kind."""
    import gzip
    import shutil

    from helpers_reward import write_config_only_rm
    from transformers import AutoTokenizer

    from moslim_plugin.core.rm import MultiHeadRewardModel
    from moslim_plugin.core.spec import MAX_SPEC_BYTES, load_spec

    d = tmp_path_factory.mktemp("catalogue")
    model = MultiHeadRewardModel.from_backbone(tiny_bert, load_spec("hh"))
    model.save_pretrained(d / "rm", tokenizer=AutoTokenizer.from_pretrained(tiny_bert))
    shutil.copytree(d / "rm", d / "corrupt-rm")
    (d / "corrupt-rm" / "model.safetensors").write_bytes(b"cut short")
    write_config_only_rm(d / "rm-helpsteer", "helpsteer")
    (d / "bad-config").mkdir()
    (d / "bad-config" / "config.json").write_text("{not json")
    (d / "plain-config").mkdir()
    (d / "plain-config" / "config.json").write_text('{"model_type": "bert"}')
    (d / "afile").write_text("a file where a folder is expected")

    def rows(name, items):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("".join(json.dumps(item) + "\n" for item in items))

    rows("rows.jsonl", [{"question": f"q{i}", "response": "r", "labels": {"helpful": i % 2, "harmless": 0}}
                        for i in range(8)])  # fmt: skip
    rows("rated.jsonl", [{"question": "q", "response": "r", "helpful": 1, "harmless": 0}])
    (d / "prompts.txt").write_text("How do I bake bread?\nWhat is a prime?\n")
    data = d / "data"
    data.mkdir()
    (data / "bad.jsonl").write_text('{"input": "one?"}\n{"input": \n')
    (data / "notrow.jsonl").write_text('"one?"\n')
    (data / "deep.jsonl").write_text('{"input": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    (data / "deep.json").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    (data / "empty.txt").write_text("")
    (data / "empty.jsonl").write_text("")
    (data / "binary.txt").write_bytes(b"\xff\xfe\x00 not text")
    (data / "cut.jsonl.gz").write_bytes(gzip.compress(b'{"input": "q"}\n' * 500)[:40])
    (data / "no-data").mkdir()
    rows("data/prompts_noinput.jsonl", [{"prompt": "one?"}])
    rows("data/prompts_emptyinput.jsonl", [{"input": ""}])
    rows("data/prompts_labelled.jsonl", [{"input": "one?", "label": "spam"}])
    rows("data/prompts_numbers.jsonl", [{"input": 42}])
    rows("data/unrated.jsonl", [{"question": "q", "response": "r"}])
    rows("data/rated_out_of_range.jsonl", [{"question": "q", "response": "r", "helpful": 5}])
    rows("data/rows_badlevel.jsonl", [{"question": "q", "response": "r", "labels": {"helpful": 7}}])
    specs = d / "specs"
    specs.mkdir()
    for name, text in SPEC_FILES.items():
        (specs / name).write_text(text)
    (specs / "latin1.yaml").write_bytes(
        "objectives:\n  - name: a\n    levels: 2\n    description: caf\xe9\n".encode("latin-1")
    )
    (specs / "big.yaml").write_text("objectives: [{name: a, levels: 2}]\ndescription: " + "x" * MAX_SPEC_BYTES + "\n")
    keys = d / "keys"
    keys.mkdir()
    (keys / "short").write_text("tooshort\n")
    (keys / "binary").write_bytes(b"\xff" * 40)
    (d / "out").mkdir()
    (d / "cwd").mkdir()  # the commands run here: a default output folder would show up in the snapshot
    return d


@pytest.fixture(scope="module")
def taken_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def fill(text, bad, tiny_bert, taken_port, base=""):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    from moslim_plugin.integration.remote import REWARD_FUNC_FILE

    for key, value in {"{base}": base, "{d}": str(bad), "{bert}": str(tiny_bert), "{taken_port}": str(taken_port),
                       "{free_port}": str(free), "{reward_func}": str(REWARD_FUNC_FILE)}.items():  # fmt: skip
        text = text.replace(key, value)
    return text


def snapshot(folder) -> set:
    return {os.path.join(root, name) for root, dirs, files in os.walk(folder) for name in dirs + files}


@pytest.fixture
def quiet_loading():
    """transformers' 'Loading weights' bar also goes to stderr: off, so that stderr is the error line alone."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    yield
    logging.enable_progress_bar()


IN_PROCESS = {"prepare-prompts", "prepare-ratings", "train-rm", "evaluate-rm", "evaluate", "screen", "demo",
              "serve-reward"}  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize("command, args, fragment", cases(lambda c: c in IN_PROCESS))
def test_a_bad_input_to_a_command_is_one_line_naming_it_exit_2_and_leaves_nothing_behind(
    command, args, fragment, bad, tiny_bert, taken_port, capsys, monkeypatch, quiet_loading
):
    monkeypatch.chdir(bad / "cwd")
    argv = shlex.split(fill(args, bad, tiny_bert, taken_port, fill(BASE[command], bad, tiny_bert, taken_port)))
    before = snapshot(bad)
    rc = main([command, *argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"moslim-openrlhf {command}: error:"), err
    assert fill(fragment, bad, tiny_bert, taken_port) in err, err
    assert snapshot(bad) == before, sorted(snapshot(bad) - before)


# A handful of lines again through the installed console script, in a process of their own: what a user runs.
CONSOLE_SCRIPT_LINES = ("prepare-prompts | {base} --moslim.spec {d}/specs/latin1.yaml",
                        "train-rm | {base} --adam.lr nan", "serve-reward | {base} --server.port 70000",
                        "demo | {base} --rollout.top_p 0")  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize(
    "command, args, fragment", [p for p in cases(lambda c: True) if " | ".join(p.values[:2]) in CONSOLE_SCRIPT_LINES]
)
def test_the_console_script_gives_the_same_one_line_error_and_exit_code_2(
    command, args, fragment, bad, tiny_bert, taken_port
):
    from pathlib import Path

    argv = shlex.split(fill(args, bad, tiny_bert, taken_port, fill(BASE[command], bad, tiny_bert, taken_port)))
    script = Path(sys.executable).parent / "moslim-openrlhf"
    proc = subprocess.run([str(script), command, *argv], capture_output=True, text=True, timeout=300, cwd=bad / "cwd")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"moslim-openrlhf {command}: error:")
    assert fill(fragment, bad, tiny_bert, taken_port) in proc.stderr, proc.stderr


LAUNCHER_DRIVER = """
import contextlib, io, json, sys, traceback
from moslim_plugin.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = main(["train_ppo_ray", *argv])
        except SystemExit as e:
            rc = e.code
        except BaseException:
            rc, _ = None, traceback.print_exc()
    results.append([rc, err.getvalue()])
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def launcher_results(bad, tiny_bert, taken_port):
    """Every train_ppo_ray line run in one subprocess: the launcher activates the plugin's OpenRLHF patches for the
    rest of its process. vLLM cannot be installed here; its stub (three names OpenRLHF imports) stands in."""
    from moslim_plugin.integration.vllm_stub import PATH as VLLM_STUB

    lines = [p.values[1:] for p in cases(lambda c: c == "train_ppo_ray")]
    argvs = [shlex.split(fill(args, bad, tiny_bert, taken_port)) for args, _ in lines]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(VLLM_STUB), os.environ.get("PYTHONPATH", "")]))
    before = snapshot(bad)
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER_DRIVER, json.dumps(argvs)],
        env=env, capture_output=True, text=True, timeout=600, cwd=bad / "cwd",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = dict(zip((args for args, _ in lines), json.loads(proc.stdout.splitlines()[-1])))
    return results, sorted(snapshot(bad) - before)


@pytest.mark.integration
@pytest.mark.parametrize("command, args, fragment", cases(lambda c: c == "train_ppo_ray"))
def test_a_bad_train_ppo_ray_flag_is_one_line_naming_it_with_exit_2_before_ray_starts(
    command, args, fragment, launcher_results, bad, tiny_bert, taken_port
):
    results, left_behind = launcher_results
    rc, err = results[args]
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1, (rc, err)
    assert not left_behind, left_behind  # the lines ran together: none of them may leave anything
    assert err.startswith("moslim-openrlhf train_ppo_ray: error:"), err
    assert fill(fragment, bad, tiny_bert, taken_port) in err, err


@pytest.mark.integration
@pytest.mark.parametrize("command, args, fragment", cases(lambda c: c == "reward-func"))
def test_a_bad_reward_function_configuration_stops_it_at_import_in_one_line(
    command, args, fragment, bad, tiny_bert, taken_port, monkeypatch
):
    # OpenRLHF's own loading of the file: the engine is built at import, from the job's env.
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    from moslim_plugin import UserError
    from moslim_plugin.integration.remote import REWARD_FUNC_FILE
    from moslim_plugin.integration.reward_config import ENV_VAR

    monkeypatch.setenv(ENV_VAR, fill(args, bad, tiny_bert, taken_port))
    with pytest.raises(UserError) as refused:
        SingleTurnAgentExecutor(str(REWARD_FUNC_FILE))
    message = str(refused.value)
    assert fill(fragment, bad, tiny_bert, taken_port) in message and "\n" not in message, message


@pytest.fixture(scope="module")
def server(bad):
    """serve-reward's app on the catalogue's checkpoint, small bounds (256 KiB, 4 samples), on a free loopback port."""
    from helpers_reward import serving

    from moslim_plugin.integration.reward_config import RewardConfig
    from moslim_plugin.integration.reward_engine import build_engine

    engine = build_engine(RewardConfig(rm_path=str(bad / "rm"), max_length=128, device="cpu"))
    with serving(engine, max_body_bytes=256 * 1024, max_samples=4) as base:
        yield base


BODIES = {
    "{deep}": b"[" * 100_000 + b"]" * 100_000,
    "{nested20}": json.dumps(
        {"query": ["q"], "prompts": ["p"], "labels": ["l"], "x": json.loads("[" * 20 + "]" * 20)}
    ).encode(),
    "{big}": json.dumps({"query": ["x" * 300_000], "prompts": ["p"], "labels": ["l"]}).encode(),
    "{many}": json.dumps({"query": ["q"] * 5, "prompts": ["p"] * 5, "labels": ["l"] * 5}).encode(),
}


@pytest.mark.integration
@pytest.mark.parametrize("command, args, fragment", cases(lambda c: c == "http"))
def test_a_bad_http_body_is_a_4xx_naming_what_is_wrong_and_counted(command, args, fragment, server):
    import urllib.error
    import urllib.request

    body = BODIES.get(args, args.encode())
    request = urllib.request.Request(server + "/get_reward", body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=60)
    status, expected = fragment.split(" ", 1)
    error = json.loads(answer.value.read())["error"]
    assert answer.value.code == int(status) and expected in error and "\n" not in error, (answer.value.code, error)
    with urllib.request.urlopen(server + "/stats", timeout=30) as reply:
        assert json.loads(reply.read())[f"http_{status}"] >= 1


@pytest.mark.unit
def test_the_catalogue_holds_at_least_150_cases_across_every_kind_of_input():
    commands = [p.values[0] for p in cases(lambda c: True)]
    assert len(commands) >= 150, len(commands)
    lines = {" | ".join(p.values[:2]) for p in cases(lambda c: True)}
    assert set(CONSOLE_SCRIPT_LINES) <= lines  # each console-script case is a catalogue line
    assert set(commands) >= IN_PROCESS | {"train_ppo_ray", "reward-func", "http"}
