"""``lorastack eval``: score adapters against the base at several weights with evaluator plugins."""

from __future__ import annotations

from pathlib import Path

import click

from .grammar import json_option, output_option


@click.command("eval")
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@click.option("--base", required=True, help="The base model: a folder, checkpoint, Hub id or alias (toy).")
@click.option("--prompts", default=None, metavar="FILE|'a|b'",
              help="Prompts: a file with one per line, or prompts separated by '|'.")  # fmt: skip
@click.option(
    "--dreambench",
    type=click.Choice(["object", "live"]),
    default=None,
    help="The DreamBench prompts (25, for an object or a live subject) with --token and --class-noun.",
)
@click.option("--token", default=None, help="The subject's token (DreamBench's unique identifier, 'sks'); prompts "
              "naming it or an adapter's trigger words are subject prompts, the others plain ones.")  # fmt: skip
@click.option("--class-noun", default=None, help="The subject's class noun for --dreambench (dog, backpack).")
@click.option("--seeds", default=4, show_default=True, type=click.IntRange(1, 64), help="Images per prompt.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1), help="The first seed.")
@click.option("--weights", default="0,0.5,1", show_default=True, metavar="W,W,…|START:STOP:STEP",
              help="Adapter weights (0, the base, is always scored).")  # fmt: skip
@click.option(
    "--evaluator",
    "evaluators",
    default="clip,dino,leakage",
    show_default=True,
    help="Evaluators, comma-separated (lorastack plugins lists them; toy: offline, for --base toy).",
)
@click.option("--option", "pairs", multiple=True, metavar="EVALUATOR.KEY=VALUE",
              help="An evaluator's option (clip.model=DIR, dino.batch-size=8); repeatable.")  # fmt: skip
@click.option(
    "--clip-model",
    default=None,
    metavar="DIR|HUB_ID",
    help="The CLIP model of clip and leakage (same as --option clip.model=… --option leakage.model=…).",
)
@click.option("--dino-model", default=None, metavar="DIR|HUB_ID", help="The DINO model (--option dino.model=…).")
@click.option("--instance-data", type=click.Path(path_type=Path), default=None,
              help="The subject's own images (CLIP-I, DINO, toy fidelity).")  # fmt: skip
@click.option("--steps", default=25, show_default=True, type=click.IntRange(1, 1000), help="Sampling steps.")
@click.option("--guidance", default=None, type=click.FloatRange(0, 100), help="Default: the base's own.")
@click.option("--size", default=None, type=click.IntRange(8, 4096), help="Image side (default: the base's own).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best one present).")
@click.option("--no-record", is_flag=True, help="Do not store the scores with the registry versions evaluated.")
@output_option("folder", "(the table, a plot per metric, the grids, scores.json).")
@json_option("the scores and the recommended weights")
def eval_cmd(refs, base, prompts, dreambench, token, class_noun, seeds, seed, weights, evaluators, pairs,
             clip_model, dino_model, instance_data, steps, guidance, size, device, no_record, output,
             as_json):  # fmt: skip
    """Score adapters REF... (files or registry references) against the base on the same prompts and seeds.

    Each adapter is drawn at each weight; the evaluators score every image; the table gives mean ± spread per
    adapter, weight and metric, with the recommended weight (docs/evaluation.md gives the rule). Scores of registry
    versions are stored with them (lorastack show, lorastack list --sort score:METRIC).
    """
    from lorastack.core.evaluation import EvaluationError, parse_weights, table_lines
    from lorastack.core.evaluation_run import (
        EvalPlan,
        dreambench_prompts,
        load_prompts,
        parse_evaluator_options,
        run_evaluation,
    )

    from .grammar import echo_json
    from .main import quiet_libraries

    quiet_libraries()
    names = [n.strip() for n in evaluators.split(",") if n.strip()]
    if dreambench:
        if not token or not class_noun:
            raise EvaluationError("--dreambench needs --token (the subject's identifier) and --class-noun (dog)")
        if prompts:
            raise EvaluationError("--dreambench and --prompts are two prompt sets; give one")
        prompt_list = dreambench_prompts(token, class_noun, live=dreambench == "live")
    else:
        if not prompts:
            raise EvaluationError("no prompts: pass --prompts FILE|'a|b', or --dreambench object|live")
        prompt_list = load_prompts(prompts)
    options = parse_evaluator_options(pairs, names)
    for evaluator, key, value in (("clip", "model", clip_model), ("leakage", "model", clip_model),
                                  ("dino", "model", dino_model)):  # fmt: skip
        if value is not None and evaluator in options:
            options[evaluator].setdefault(key, value)
    plan = EvalPlan(prompt_list, list(range(seed, seed + seeds)), parse_weights(weights), steps, guidance, size,
                    [token] if token else [])  # fmt: skip
    report = run_evaluation(refs, base, plan, names, options=options, instance_data=instance_data, output=output,
                            device=device, record=not no_record)  # fmt: skip
    if as_json:
        echo_json(report.as_dict())
        return
    for line in table_lines(report.scores.rows, report.scores.recommended):
        click.echo(line)
    if output is not None:
        click.echo(f"wrote {len(report.files)} files to {output} (scores.json, scores.txt, plots, grids)")


def register(group: click.Group) -> None:
    group.add_command(eval_cmd)
