"""eebench workflow: split → train (or calibrate) → evaluate → tables → figures.

  snakemake --profile profiles/default                          # config/default.yaml
  snakemake --profile profiles/default --configfile config/fmnist.yaml
  snakemake -n --configfile config/paper.yaml                   # job graph, no data needed
  snakemake --configfile config/<study>.yaml --report results/<study>/report.html

Every job is one `eebench` command; the study config (validated here against
pipelines/workflow/schemas/study.schema.yaml, then against the registries) is the only input
that the commands share. Results go to results/<study>/ (layout: docs/protocol.md); the
tables stage also tests the paper's claims on the runs' per-sample outputs (claims.csv).
`eebench verify` (make verify) reruns this workflow from scratch in a temporary directory
and compares every committed table with the new one (docs/protocol.md, "Verify").
"""

import shlex

from snakemake.utils import min_version, validate

from eebench.pipelines.analysis.figures import FIGURE_FILES
from eebench.pipelines.analysis.tables import TABLE_FILES

min_version("9.0")  # update(): an output kept, and restored, when its job fails


include: "workflow/rules/common.smk"


STUDY_FILE = study_file()
load_config(STUDY_FILE)
STUDY = checked_study(STUDY_FILE)  # a wrong key, type or name stops here, naming it
validate(config, str(STUDY_SCHEMA))  # Snakemake's check of the same schema; fills defaults
ROOT = f"results/{STUDY['study']}"
RUNS = expand_runs(STUDY)
TRAIN_RUNS = run_pattern([spec for spec in RUNS if method_kind(spec.method) == "train"])
POSTHOC_RUNS = run_pattern([spec for spec in RUNS if method_kind(spec.method) == "posthoc"])
SPLIT_FILES = {dataset: split_file(ROOT, dataset, STUDY["split_seed"]) for dataset in STUDY["datasets"]}
DATASET_OF_SPLIT = {Path(path).name: dataset for dataset, path in SPLIT_FILES.items()}
# Shell commands use these globals rather than `params:` on purpose: a params change
# reruns a job, and the absolute paths below change with the checkout, not the results.
# The one parameter of the run rules is the run's config hash (what its numbers depend on),
# with the exit rules' code for the rules that fit them (evaluate, calibrate).
EEBENCH = eebench_command()
COMMON = f"--study {shlex.quote(str(STUDY_FILE))} --results {shlex.quote(ROOT)}"
# Jobs that make numbers or timings start under the faster allocator, where there is one.
PRELOAD = preload_prefix()
RUN_COMMAND = "{PRELOAD}{EEBENCH} {rule} {COMMON} --run {wildcards.run:q} --threads {threads} > {log:q} 2>&1"
GPUS = gpus_per_job(STUDY)
# Training on several GPUs: torchrun starts one `eebench train` per GPU (data parallel).
LAUNCH = launcher(GPUS)
# A train job never retrains or deletes a finished model of the run's config: it waits
# for a live trainer of the run (an orphan of a killed Snakemake) and uses its model.
TRAIN_COMMAND = RUN_COMMAND.replace("{EEBENCH}", "{LAUNCH}{EEBENCH}").replace(
    " --threads", " --wait --replace-stale --threads"
)
TRAIN_MINUTES = STUDY.get("slurm", {}).get("time_minutes", 24 * 60)
# Runs whose real early exit is timed (the study's `latency` section), and their pattern.
LATENCY_RUNS = latency_runs(STUDY)
EXIT_RULES_CODE = exit_rules_code()


def spec_of(wildcards):
    return RunSpec.from_path(wildcards.run)


def run_split(wildcards):
    return SPLIT_FILES[spec_of(wildcards).dataset]


def run_config_hash(wildcards):
    return config_hash(STUDY, ROOT, spec_of(wildcards))


def run_files(spec):
    """Every file of a finished run that the tables, figures or post-hoc runs read."""
    names = ["anytime.csv", "budgeted.csv", "outputs.npz", "exit_rules.json"]
    if method_kind(spec.method) == "train":
        names.append("features.npz")
    if spec in LATENCY_RUNS:
        names.append("latency.csv")
    return [f"{ROOT}/{spec.path}/{name}" for name in names]


report: "report/workflow.rst"


localrules:
    all,
    split,
    tables,
    figures,
    explorer,


rule all:
    input:
        # every run's files too: a lost outputs.npz is made again even when the tables are
        # up to date, and a fresh checkout (results/ without model.pt) runs the study
        [path for spec in RUNS for path in run_files(spec)],
        expand(f"{ROOT}/tables/{{name}}", name=TABLE_FILES),
        expand(f"{ROOT}/figures/{{name}}", name=FIGURE_FILES),
        f"{ROOT}/explorer/index.html",


rule split:
    output:
        f"{ROOT}/splits/{{name}}",
    wildcard_constraints:
        name="|".join(map(re.escape, DATASET_OF_SPLIT)),
    params:
        dataset=lambda wildcards: DATASET_OF_SPLIT[wildcards.name],
    log:
        f"{ROOT}/logs/split/{{name}}.log",
    threads: 1
    resources:
        **resources(mem_mb=2000, runtime=10),
    shell:
        "{EEBENCH} split {COMMON} --dataset {params.dataset} > {log:q} 2>&1"


rule train:
    input:
        split=run_split,
        upstream=lambda wildcards: [
            f"{ROOT}/{up.path}/model.pt" for up in needed_runs(STUDY, RUNS, spec_of(wildcards))
        ],
    output:
        # model.pt is written last, atomically: it marks a finished run. Checkpoints and
        # the training logs are not outputs, so an interrupted run resumes from them.
        # update(): Snakemake neither deletes it before the job (which keeps a model of
        # the run's config) nor after a failed job (it restores it).
        update(f"{ROOT}/{{run}}/model.pt"),
    wildcard_constraints:
        run=TRAIN_RUNS,
    params:
        config=run_config_hash,
    log:
        f"{ROOT}/logs/train/{{run}}.log",
    threads: 8
    resources:
        **resources(mem_mb=16000, runtime=TRAIN_MINUTES, gpu=GPUS),
    shell:
        TRAIN_COMMAND


rule evaluate:
    input:
        model=f"{ROOT}/{{run}}/model.pt",
        split=run_split,
    output:
        outputs=f"{ROOT}/{{run}}/outputs.npz",
        features=f"{ROOT}/{{run}}/features.npz",
        anytime=f"{ROOT}/{{run}}/anytime.csv",
        budgeted=f"{ROOT}/{{run}}/budgeted.csv",
        rules=f"{ROOT}/{{run}}/exit_rules.json",
    wildcard_constraints:
        run=TRAIN_RUNS,
    params:
        config=run_config_hash,
        exit_rules=EXIT_RULES_CODE,
        features_subset=STUDY["features_subset"],
    log:
        f"{ROOT}/logs/evaluate/{{run}}.log",
    threads: 8
    resources:
        **resources(mem_mb=16000, runtime=120, gpu=min(GPUS, 1)),  # one process
    shell:
        RUN_COMMAND


rule calibrate:
    input:
        lambda wildcards: [
            f"{ROOT}/{up.path}/{name}"
            for up in needed_runs(STUDY, RUNS, spec_of(wildcards))
            for name in ("outputs.npz", "features.npz")
        ],
    output:
        outputs=f"{ROOT}/{{run}}/outputs.npz",
        anytime=f"{ROOT}/{{run}}/anytime.csv",
        budgeted=f"{ROOT}/{{run}}/budgeted.csv",
        rules=f"{ROOT}/{{run}}/exit_rules.json",
    wildcard_constraints:
        run=POSTHOC_RUNS,
    params:
        config=run_config_hash,
        exit_rules=EXIT_RULES_CODE,
    log:
        f"{ROOT}/logs/calibrate/{{run}}.log",
    threads: 4
    resources:
        **resources(mem_mb=16000, runtime=120),
    shell:
        RUN_COMMAND


rule latency:
    input:
        # the run's evaluated (or calibrated) files and, for a post-hoc run, its source's model
        lambda wildcards: [
            f"{ROOT}/{wildcards.run}/{name}" for name in ("outputs.npz", "exit_rules.json")
        ]
        + [f"{ROOT}/{up.path}/model.pt" for up in needed_runs(STUDY, RUNS, spec_of(wildcards))],
        split=run_split,
    output:
        f"{ROOT}/{{run}}/latency.csv",
    wildcard_constraints:
        run=run_pattern(LATENCY_RUNS),
    params:
        config=run_config_hash,
        latency=STUDY.get("latency"),
    log:
        f"{ROOT}/logs/latency/{{run}}.log",
    # every core: timings are only meaningful with no other job on the machine
    threads: workflow.cores
    resources:
        **resources(mem_mb=8000, runtime=30),
    shell:
        RUN_COMMAND


rule tables:
    input:
        [path for spec in RUNS for path in run_files(spec)],
    output:
        # update(): a failing tables job leaves the previous tables in place
        [
            update(
                report(f"{ROOT}/tables/{name}", caption="report/tables.rst", category="Tables")
            )
            for name in TABLE_FILES
        ],
    log:
        f"{ROOT}/logs/tables.log",
    threads: 1
    resources:
        **resources(mem_mb=4000, runtime=15),
    shell:
        "{EEBENCH} tables {COMMON} > {log:q} 2>&1"


rule figures:
    input:
        rules.tables.output,
    output:
        [
            report(
                f"{ROOT}/figures/{name}",
                caption=f"report/{Path(name).stem}.rst",
                category="Figures",
            )
            if name.endswith(".png")
            else f"{ROOT}/figures/{name}"
            for name in FIGURE_FILES
        ],
    log:
        f"{ROOT}/logs/figures.log",
    threads: 1
    resources:
        **resources(mem_mb=4000, runtime=15),
    shell:
        "{EEBENCH} figures {COMMON} > {log:q} 2>&1"


# One offline HTML page to browse the study (curves, claims, runs); it reads only the
# tables and the runs' committed text files, which exist once the tables do.
rule explorer:
    input:
        rules.tables.output,
    output:
        f"{ROOT}/explorer/index.html",
    log:
        f"{ROOT}/logs/explorer.log",
    threads: 1
    resources:
        **resources(mem_mb=2000, runtime=10),
    shell:
        "{EEBENCH} explorer {COMMON} > {log:q} 2>&1"
