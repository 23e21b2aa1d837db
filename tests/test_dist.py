import pytest

from mmpretrain.engine.dist import detect_process, first_host


@pytest.mark.parametrize("nodelist,host", [
    ("gpu-node7", "gpu-node7"), ("gpu[03-05,7]", "gpu03"), ("gpu[12]", "gpu12"), ("a[1-2],b[3-4]", "a1"),
    ("cpu1,cpu2", "cpu1")])
def test_first_host_of_a_slurm_nodelist(nodelist, host):
    assert first_host(nodelist) == host


def test_torchrun_and_deepspeed_launcher_environment():
    env = {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "node0", "MASTER_PORT": "29400",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}  # torchrun inside srun: torchrun's variables win
    info = detect_process(env)
    assert (info.rank, info.local_rank, info.world_size, info.master_addr, info.master_port) == \
        (5, 1, 8, "node0", 29400)
    assert info.launcher == "torchrun" and info.distributed and not info.is_main


def test_plain_srun_environment():
    env = {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "gpu[08-09]"}
    info = detect_process(env)
    assert (info.rank, info.local_rank, info.world_size, info.master_addr, info.launcher) == \
        (3, 1, 4, "gpu08", "srun")
    assert info.master_port == 29500


def test_no_launcher_is_one_process():
    info = detect_process({})
    assert (info.rank, info.world_size, info.launcher, info.distributed, info.is_main) == (0, 1, "single", False, True)
