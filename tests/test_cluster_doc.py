"""docs/cluster.md: the SLURM job script it shows is the one dask-jobqueue makes from its recipe."""

import pathlib
import re
import sys

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "cluster.md"


def _blocks(text, language):
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_the_slurm_job_script_shown_is_what_dask_jobqueue_generates():
    text = DOC.read_text()
    (recipe,) = [block for block in _blocks(text, "python") if "SLURMCluster(" in block]
    shown = _blocks(text.split("<!-- slurm-job-script -->", 1)[1], "bash")[0]
    namespace = {}
    exec(recipe, namespace)  # builds the cluster (a local scheduler; nothing is submitted)
    cluster = namespace["cluster"]
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    script = re.sub(r"tcp://\S+", "tcp://SCHEDULER", script).replace(sys.executable, "python")
    assert script.strip() == shown.strip()
