"""The convergence benchmark (``mirai bench convergence``): FID against training steps, per variant.

The paper's headline claim is about convergence speed (Mirai-I at 40 epochs matches the
baseline at 400, docs/method.md §8), so one final number per run is not enough: every variant is
trained from the same seeds, data order and step budget, and each run's EMA weights are
scored at the same checkpoints with the same sample count, labels and sampling settings.
A variant is a training config plus ``key=value`` overrides, so an ablation is just one
more variant. ``mirai demo`` is a one-seed bench of the shipped Fashion-MNIST configs.

Scores use the Fashion-MNIST evaluator (``mirai.evaluation.suite``) against two references
built once from the test code store: the real test images, and the tokenizer's
reconstructions of them (decoded codes). The generator cannot beat the tokenizer, so FID
against reconstructions isolates what the GPT learned, and FD(reconstructions, real) — the
tokenizer floor — says how much of the FID against real images no GPT could remove.

Everything is resumable: finished records live in ``OUT/results.json`` and are skipped, an
interrupted training run continues from its latest checkpoint, and sample files resume
batch by batch. The work splits across processes (cores, GPUs, machines sharing a file
system): each process given a share (``variants``/``seeds`` of ``run_convergence``, ``--variant``
and ``--seed`` on the command line) trains and scores only that share and merges its records
into the shared ``results.json`` under a file lock; one plain run afterwards writes the report.
Layout of ``OUT``::

    bench.yaml            the resolved bench config (a rerun must agree on how records were scored)
    runs/VARIANT/seed_S/  training runs (config.yaml, metrics.jsonl, checkpoints/step_*); ``runs_dir``
                          puts them elsewhere, e.g. another bench's runs, to rescore those with
                          other scoring settings (more samples) without training again, and
                          ``run_layout`` names the folder of each run under it
    reference/            real.npz, recon.npz: reference batches (ADM layout, with evaluator features)
    reference.json        tokenizer floor and evaluator noise floor (at num_samples real images)
    results.json          variant -> [{seed, step, fid, precision, recall, ...}]
    results.md            the table (mean ± std over seeds, the two floors as rows)
    fid_vs_steps.png      FID, FID vs reconstructions and class accuracy against steps, a band over seeds
    grid_VARIANT.png      samples of the first seed's final checkpoint, a row per class, named
    tsne_maps.png, .json  t-SNE token maps of one test image (paper Fig. 9) by each variant's final
                          checkpoint of the first seed, with their smoothness scores and a colour key
    curves.png            training curves of every run: NTP loss, foresight head losses, validation NLL,
                          one colour per variant and a band over its seeds
    (every figure also as .pdf beside its .png)

Modules (each imports PyTorch; import the one you need): ``config`` (``BenchConfig``, run
planning, shares), ``scorer`` (evaluator, references, floors, checkpoint scores, grids),
``store`` (the locked ``results.json`` and the checks that keep its records comparable),
``run`` (``run_convergence``: training, scoring, report), ``report`` (tables and plots) and
``demo`` (``mirai demo``).
"""
