"""Pure unit tests of harness-launch: cluster specs, Slurm, plans, exit-code rules."""

import json
import os
import socket
import sys

import pytest

from launch import cli, cluster, plan, slurm, supervisor
from train.errors import UsageError

HOSTS = (cluster.Host(name="alpha", slots=2), cluster.Host(name="beta", slots=3))


def resolve(**flags):
    return cluster.resolve(**{"nproc": None, "env": {}, "hostname": "elsewhere"} | flags)


# --- hosts and hostfiles ---------------------------------------------------------


def test_hosts_flag_is_parsed_in_order():
    assert cluster.parse_hosts("alpha:2, beta:3") == HOSTS


@pytest.mark.parametrize(
    "text, expected",
    [
        ("alpha", "expected host:slots"),
        ("alpha:2,", "expected host:slots"),
        ("alpha:x", "expected host:slots"),
        ("alpha:0", "needs at least 1 slot"),
        ("alpha:1,alpha:1", "host alpha is listed twice"),
    ],
)
def test_bad_hosts_flag_is_a_usage_error(text, expected):
    with pytest.raises(UsageError, match=expected):
        cluster.parse_hosts(text)


def test_hostfile_takes_both_formats_comments_and_blank_lines(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("# the cluster\nalpha slots=2\n\n  beta:3   # big one\n")
    assert cluster.parse_hostfile(str(path)) == HOSTS


@pytest.mark.parametrize(
    "text, expected",
    [
        ("alpha slots=2\nbeta\n", "line 2: expected 'host slots=N' or 'host:N', got 'beta'"),
        ("alpha slots=two\n", "line 1"),
        ("alpha slots=2 max_slots=4\n", "line 1"),
        ("# nothing\n\n", "lists no hosts"),
        ("alpha:2\nalpha slots=1\n", "listed twice"),
    ],
)
def test_malformed_hostfile_is_a_usage_error(tmp_path, text, expected):
    path = tmp_path / "hosts"
    path.write_text(text)
    with pytest.raises(UsageError, match=expected):
        cluster.parse_hostfile(str(path))


def test_unreadable_hostfile_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot read it .No such file or directory"):
        cluster.parse_hostfile(str(tmp_path / "missing"))
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UsageError, match="cannot read it"):
        cluster.parse_hostfile(str(tmp_path / "binary"))


# --- the spec: ranks, ports, TF_CONFIG ----------------------------------------------


def test_local_spec_picks_fresh_free_ports():
    spec = resolve(nproc=3)
    assert (spec.world_size, spec.local_size, spec.rank_offset) == (3, 3, 0)
    addresses = spec.worker_addresses()
    assert len(set(addresses)) == 3
    assert all(address.startswith("localhost:") for address in addresses)


def test_local_spec_with_a_master_port_is_deterministic():
    spec = resolve(nproc=2, master_port=40000)
    assert spec.worker_addresses() == ["localhost:40000", "localhost:40001"]


def test_node_rank_offsets_the_global_ranks_and_ports_are_per_host():
    spec = resolve(hosts="alpha:2,beta:3", node_rank=1)
    assert (spec.world_size, spec.local_size, spec.rank_offset) == (5, 3, 2)
    assert spec.worker_addresses() == [
        "alpha:29500",
        "alpha:29501",
        "beta:29500",
        "beta:29501",
        "beta:29502",
    ]


def test_node_rank_is_found_by_host_name(tmp_path):
    assert resolve(hosts="alpha:2,beta:3", hostname="beta").node_rank == 1
    assert resolve(hosts="alpha.example.org:2,beta.example.org:3", hostname="beta").node_rank == 1
    assert resolve(hosts="alpha:2,beta:3", hostname="alpha.example.org").node_rank == 0
    with pytest.raises(UsageError, match=r"--node-rank is required: this host \(gamma\)"):
        resolve(hosts="alpha:2,beta:3", hostname="gamma")


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({"hosts": "alpha:2,beta:3", "node_rank": 2}, "--node-rank 2 is out of range"),
        (
            {"hosts": "alpha:2,beta:3", "node_rank": 0, "nproc": 4},
            "--nproc 4 does not match the 5 slots of --hosts",
        ),
        ({"nproc": 0}, "--nproc must be at least 1"),
        ({"nproc": -2}, "--nproc must be at least 1"),
        ({}, "--nproc is required"),
        ({"nproc": 2, "node_rank": 1}, "--node-rank 1 needs --hosts or --hostfile"),
        ({"hosts": "alpha:2", "hostfile": "hosts"}, "either --hosts or --hostfile"),
        ({"hosts": "alpha:2", "master_port": 65535}, "ports 65535..65536"),
        ({"nproc": 1, "master_port": 0}, "--master-port 0"),
    ],
)
def test_inconsistent_flags_are_usage_errors(flags, expected):
    with pytest.raises(UsageError, match=expected):
        resolve(**flags)


def test_free_ports_are_distinct_and_bindable():
    ports = cluster.free_ports(4)
    assert len(set(ports)) == 4
    for port in ports:
        with socket.socket() as probe:
            probe.bind(("", port))


# --- Slurm ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "nodelist, expected",
    [
        ("node[01-03],gpu5", ["node01", "node02", "node03", "gpu5"]),
        ("n[1,3-4]", ["n1", "n3", "n4"]),
        ("node[08-10]", ["node08", "node09", "node10"]),
        ("rack[1-2]-n[7-8]", ["rack1-n7", "rack1-n8", "rack2-n7", "rack2-n8"]),
        ("single", ["single"]),
    ],
)
def test_slurm_nodelists_expand(nodelist, expected):
    assert slurm.expand_nodelist(nodelist) == expected


@pytest.mark.parametrize("nodelist", ["node[1-", "node[3-1]", "a,,b", "n[[1]]", "n[a-b]", "n[]"])
def test_nodelists_the_parser_refuses(nodelist):
    with pytest.raises(ValueError):
        slurm.expand_nodelist(nodelist)


def test_refused_nodelist_goes_to_scontrol_or_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UsageError, match="cannot expand the Slurm nodelist"):
        slurm.hostnames("n[1-2")
    scontrol = tmp_path / "scontrol"
    scontrol.write_text("#!/bin/sh\necho n1; echo n2\n")
    scontrol.chmod(0o755)
    assert slurm.hostnames("n[1-2") == ["n1", "n2"]


def slurm_env(**extra):
    return {
        "SLURM_JOB_ID": "7",
        "SLURM_JOB_NODELIST": "node[01-03]",
        "SLURM_STEP_NODELIST": "node[01-02]",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURMD_NODENAME": "node02",
        "SLURM_NODEID": "1",
    } | extra


def test_slurm_step_gives_hosts_and_node_rank():
    spec = cluster.resolve(nproc=4, env=slurm_env())
    assert spec.hosts == (
        cluster.Host(name="node01", slots=2),
        cluster.Host(name="node02", slots=2),
    )
    assert (spec.node_rank, spec.rank_offset, spec.master_port) == (1, 2, 29500)


def test_slurm_node_id_is_the_fallback_for_slurm_hosts_only():
    env = slurm_env(SLURMD_NODENAME="renamed")
    assert cluster.resolve(nproc=4, env=env, hostname="renamed").node_rank == 1
    with pytest.raises(UsageError, match="--node-rank is required"):
        cluster.resolve(nproc=2, hosts="alpha:1,beta:1", env=env, hostname="renamed")


def test_explicit_hosts_win_over_slurm():
    spec = cluster.resolve(nproc=2, hosts="alpha:1,beta:1", node_rank=0, env=slurm_env())
    assert [host.name for host in spec.hosts] == ["alpha", "beta"]


def test_one_node_slurm_job_is_a_local_run():
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node01", "SLURM_NODEID": "0"}
    assert cluster.resolve(nproc=2, env=env).master_port is None


@pytest.mark.parametrize(
    "env, nproc, expected",
    [
        (slurm_env(SLURM_STEP_NUM_NODES=None), 4, "srun --ntasks-per-node=1"),
        (slurm_env(SLURM_STEP_NUM_TASKS="8"), 4, "runs 8 tasks on 2 nodes"),
        (slurm_env(), 3, "--nproc 3 does not split evenly over the Slurm job's 2 nodes"),
        (slurm_env(), None, "--nproc is required"),
    ],
)
def test_slurm_setups_that_would_hang_are_refused(env, nproc, expected):
    env = {key: value for key, value in env.items() if value is not None}
    with pytest.raises(UsageError, match=expected):
        cluster.resolve(nproc=nproc, env=env)


def test_horovod_launcher_in_a_batch_script_is_fine():
    env = slurm_env(SLURM_STEP_NUM_NODES=None, SLURM_STEP_NUM_TASKS=None)
    env = {key: value for key, value in env.items() if value is not None}
    spec = cluster.resolve(nproc=4, env=env, launcher_per_node=False)
    assert (spec.node_rank, spec.world_size) == (0, 4)


# --- plans -----------------------------------------------------------------------


def test_multiworker_plan_gives_each_worker_its_rank_and_the_restart_count():
    spec = resolve(hosts="alpha:2,beta:3", node_rank=1)
    make = plan.make_plan(
        backend="multiworker", spec=spec, command=["python", "t.py"], env={"HOME": "/h"}
    )
    workers = make(2)
    assert [worker.rank for worker in workers] == [2, 3, 4]
    for local_rank, worker in enumerate(workers):
        config = json.loads(worker.env["TF_CONFIG"])
        assert config["task"]["index"] == worker.rank
        assert config["cluster"]["worker"] == spec.worker_addresses()
        assert worker.env["HARNESS_RANK"] == str(worker.rank)
        assert worker.env["HARNESS_LOCAL_RANK"] == str(local_rank)
        assert worker.env["HARNESS_WORLD_SIZE"] == "5"
        assert worker.env["HARNESS_RESTART_COUNT"] == "2"
        assert worker.env["HOME"] == "/h" and worker.env["PYTHONUNBUFFERED"] == "1"
        assert worker.prefix == f"[{worker.rank}] " and worker.argv == ("python", "t.py")


def test_existing_tf_config_is_kept_for_one_supervised_task():
    raw = json.dumps(
        {
            "cluster": {"chief": ["c:1"], "worker": ["w:1", "w:2"]},
            "task": {"type": "worker", "index": 1},
        }
    )
    make = plan.make_plan(
        backend="multiworker", spec=resolve(nproc=1), command=["x"], env={"TF_CONFIG": raw}
    )
    [worker] = make(0)
    assert worker.env["TF_CONFIG"] == raw
    assert (worker.rank, worker.env["HARNESS_WORLD_SIZE"]) == (2, "3")
    with pytest.raises(UsageError, match="already describes a cluster"):
        plan.make_plan(
            backend="multiworker", spec=resolve(nproc=2), command=["x"], env={"TF_CONFIG": raw}
        )


def test_horovodrun_command_line():
    argv = plan.horovod_argv(
        horovodrun="/bin/horovodrun",
        spec=resolve(nproc=2),
        command=["python", "t.py"],
        mpi=False,
        mpirun=None,
    )
    assert argv == ("/bin/horovodrun", "--gloo", "-np", "2", "-H", "localhost:2", "python", "t.py")
    spec = resolve(hosts="alpha:2,beta:3", launcher_per_node=False)
    argv = plan.horovod_argv(
        horovodrun="hvd", spec=spec, command=["t"], mpi=True, mpirun="/usr/bin/mpirun"
    )
    assert argv == ("hvd", "--mpi", "-np", "5", "-H", "alpha:2,beta:3", "t")


@pytest.mark.parametrize(
    "flags, mpi, mpirun, expected",
    [
        ({"nproc": 2}, True, None, "--mpi: mpirun is not installed"),
        (
            {"hosts": "alpha:2,beta:3", "node_rank": 1},
            False,
            None,
            "run harness-launch on the first host only",
        ),
    ],
)
def test_horovodrun_refusals(flags, mpi, mpirun, expected):
    with pytest.raises(UsageError, match=expected):
        plan.horovod_argv(
            horovodrun="hvd", spec=resolve(**flags), command=["t"], mpi=mpi, mpirun=mpirun
        )


def test_missing_horovodrun_names_the_install(monkeypatch):
    monkeypatch.setattr(plan.shutil, "which", lambda name, path=None: None)
    with pytest.raises(UsageError) as error:
        plan.find_horovodrun()
    assert str(error.value) == plan.HOROVOD_MISSING
    assert "bash launch/build_horovod.sh" in str(error.value)


def test_command_checks(tmp_path):
    with pytest.raises(UsageError, match="no command given"):
        plan.resolve_command([])
    with pytest.raises(UsageError, match="command not found: no-such-thing"):
        plan.resolve_command(["no-such-thing"])
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(UsageError, match="command is not executable"):
        plan.resolve_command([str(script)])
    script.chmod(0o755)
    assert plan.resolve_command([str(script), "-x"]) == (str(script), "-x")


def test_bare_command_beside_this_python_runs_from_there(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    python = os.path.basename(sys.executable)
    assert plan.resolve_command([python, "-c", "pass"]) == (sys.executable, "-c", "pass")


# --- supervisor rules and flags -------------------------------------------------------


def test_backoff_doubles_and_is_capped():
    assert [supervisor.backoff_seconds(n, 1.0) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert supervisor.backoff_seconds(20, 1.0) == supervisor.BACKOFF_CAP_SECONDS
    assert supervisor.backoff_seconds(3, 0.0) == 0


def test_next_step_says_what_follows():
    options = supervisor.Options(max_restarts=3, restart_backoff=1.0)
    assert supervisor.next_step(137, restart=1, options=options) == "restart 2/3 in 2.0 s"
    assert supervisor.next_step(1, restart=3, options=options) == (
        "no restarts left (--max-restarts 3); exiting with 1"
    )
    assert supervisor.next_step(2, restart=0, options=options).startswith("not restarting")


def exits(*codes, stopped=()):
    return [
        supervisor.Exit(
            rank=rank,
            label=f"worker {rank}",
            code=code,
            signal=None,
            stopped=rank in stopped,
            at=0.0,
        )
        for rank, code in enumerate(codes)
    ]


@pytest.mark.parametrize(
    "codes, stopped, expected",
    [
        ((0, 0), (), 0),
        ((42, 42), (), 42),
        ((42, 0), (), 42),
        ((42, 1), (), 1),
        ((42, 137), (1,), 1),  # the launcher had to SIGKILL it: the save is not certain
        ((143, 42), (), 143),
    ],
)
def test_exit_code_after_a_forwarded_signal(codes, stopped, expected):
    assert supervisor.code_after_signal(exits(*codes, stopped=stopped)) == expected


def test_flags_and_command_split_at_the_first_separator():
    args, command = cli.parse(["--nproc", "2", "--", "python", "t.py", "--", "--x"])
    assert (args.nproc, args.backend, args.max_restarts) == (2, "multiworker", 3)
    assert (args.restart_backoff, args.stop_timeout, args.master_port) == (1.0, 30.0, None)
    assert command == ["python", "t.py", "--", "--x"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--nproc", "1", "--restart-backoff", "nan", "--"], "--restart-backoff must be"),
        (["--nproc", "1", "--node-rank", "-1", "--"], "--node-rank must be at least 0"),
        (["--nproc", "1", "--backend", "mpi", "--"], "invalid choice"),
        (["--nproc", "1", "--stop-timeout", "-1", "--"], "--stop-timeout must be more than 0"),
    ],
)
def test_bad_flags_are_usage_errors(argv, expected):
    with pytest.raises(UsageError, match=expected):
        cli.parse(argv)


def test_main_prints_one_line_and_returns_2(capsys):
    assert cli.main(["--nproc", "0", "--", "true"]) == 2
    assert capsys.readouterr().err == "harness-launch: error: --nproc must be at least 1 (got 0)\n"


def test_horovod_refuses_a_tf_config(monkeypatch):
    monkeypatch.setattr(plan, "find_horovodrun", lambda: "hvd")
    raw = json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}})
    with pytest.raises(UsageError, match="unset it for --backend horovod"):
        plan.make_plan(
            backend="horovod", spec=resolve(nproc=1), command=["t"], env={"TF_CONFIG": raw}
        )
    make = plan.make_plan(
        backend="horovod", spec=resolve(nproc=2), command=["t"], env=dict(os.environ)
    )
    [process] = make(1)
    assert process.argv[:2] == ("hvd", "--gloo") and process.prefix == ""
    assert process.env["HARNESS_RESTART_COUNT"] == "1"


def test_horovod_preemption_is_reported_as_42_from_the_ranks_records(tmp_path):
    for rank in (0, 1):
        (tmp_path / f"rank-{rank}.exit").write_text("42\n")
    assert plan.recorded_exit_code(str(tmp_path), 1) == 42
    assert not tmp_path.exists()  # one attempt's records are consumed


def test_horovod_failure_keeps_horovodruns_code(tmp_path):
    (tmp_path / "rank-0.exit").write_text("42\n")
    (tmp_path / "rank-1.exit").write_text("1\n")
    assert plan.recorded_exit_code(str(tmp_path), 1) == 1
    assert plan.recorded_exit_code(str(tmp_path / "missing"), 1) == 1
