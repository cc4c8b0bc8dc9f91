"""`rotax eval` on a real pretrained model (SmolLM2-135M-Instruct, JSON renderer, a few hands):
it runs, and every hand's outcome is accounted for (solved, wrong or a named format error)."""

import json

from rotax.cli import main as rotax_main


def test_eval_reports_format_errors(smollm2_dir, tmp_path, capsys):
    out, episodes = tmp_path / "eval.json", tmp_path / "turns.jsonl"
    assert rotax_main(["eval", "--model", str(smollm2_dir), "--split", "id", "--n", "3", "--attempts", "1",
                       "--max-new-tokens", "48", "--greedy", "--renderer", "json", "--batch-size", "4",
                       "--no-progress", "--out", str(out), "--episodes", str(episodes)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    turns = [json.loads(line) for line in episodes.read_text().splitlines()]
    print(printed)
    assert report["settings"]["renderer"] == "JsonChatRenderer" and report["settings"]["n"] == 3
    assert len(turns) == 3 and all(t["attempt"] == 0 for t in turns)
    for turn in turns:  # an untuned 135M model: whatever it wrote is graded, never crashes
        assert turn["kind"] and isinstance(turn["reasons"], str) and turn["response"]
        if turn["reward"] < 0:
            assert turn["reasons"], turn
    assert "split id" in printed
