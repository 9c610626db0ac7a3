"""bench.hh_rlhf_check can be reused on other data: --out, --threads, --keep_models DIR and --eval_file (scored by both
RMs), on the real HH-RLHF files and MiniLM at a tiny budget."""

import gzip
import json

import pytest
import torch

from bench import hh_rlhf_check
from moslim_plugin import UserError


def write_pairs(path, shared_data, n):
    with gzip.open(shared_data / "hh-rlhf/helpful-base-test.jsonl.gz", "rt") as f:
        rows = [json.loads(next(f)) for _ in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.mark.integration
@pytest.mark.slow
def test_hh_check_keeps_both_models_scores_another_pairs_file_and_writes_where_told(tmp_path, shared_data):
    from moslim_plugin.data.evaluate_rm import evaluate

    pairs = tmp_path / "test.jsonl"  # a name that says no subset: the request comes from --eval_request
    write_pairs(pairs, shared_data, 6)
    out, kept = tmp_path / "results" / "check.json", tmp_path / "models"
    threads = torch.get_num_threads()
    argv = ["--data_dir", str(shared_data), "--backbones", "minilm", "--steps", "1", "--lr", "1e-4"]
    argv += ["--batch_pairs", "2", "--micro_batch_pairs", "2", "--eval_pairs", "4", "--max_len", "128"]
    argv += ["--out", str(out), "--keep_models", str(kept), "--eval_file", str(pairs), "--eval_request", "helpful=1"]
    try:
        assert hh_rlhf_check.main(argv + ["--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert out.with_suffix(".png").is_file() and result["config"]["threads"] == 1
    scored = result["results"]["eval_files"][str(pairs)]
    assert scored["pairs"] == 6 and {scored["minilm"][rm]["n"] for rm in ("moslim", "openrlhf")} == {6}
    # The kept MOSLIM RM is a checkpoint evaluate-rm reads, and gives the file's accuracy the bench recorded.
    again = evaluate(kept / "minilm" / "moslim", str(pairs), request={"helpful": 1}, max_length=128)
    assert again["pairs"]["accuracy"] == scored["minilm"]["moslim"]["accuracy"]
    assert (kept / "minilm" / "openrlhf" / "config.json").is_file()
    assert (kept / "minilm" / "openrlhf" / "model.safetensors").is_file()


@pytest.mark.integration
def test_hh_check_refuses_an_eval_file_without_a_request_before_training(tmp_path, shared_data):
    pairs = tmp_path / "test.jsonl"
    write_pairs(pairs, shared_data, 2)
    argv = ["--data_dir", str(shared_data), "--eval_file", str(pairs), "--keep_models", str(tmp_path / "models")]
    with pytest.raises(UserError, match="test.jsonl: row 0: no request to score the pair for"):
        hh_rlhf_check.main(argv + ["--out", str(tmp_path / "check.json")])
    assert not (tmp_path / "models").exists() and not (tmp_path / "check.json").exists()
