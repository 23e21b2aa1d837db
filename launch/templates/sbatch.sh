#!/bin/bash
# Rendered by launch/slurm.py with string.Template: its lowercase placeholders are filled at submission;
# UPPERCASE $VARIABLES are the shell's own and are left as written. Resubmit by hand with: sbatch <this file>
#SBATCH --job-name=${job_name}
#SBATCH --nodes=${nodes}
# One task per node: that task is torchrun, which starts one worker per GPU itself.
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=${gpus_per_node}
#SBATCH --cpus-per-task=${cpus_per_task}
#SBATCH --time=${time}
${optional_sbatch}
# %x-%j = job name and id: one log per job; a requeued job keeps its id and appends (--open-mode=append).
#SBATCH --output=${log_dir}/%x-%j.out
# B: = signal the batch shell only, ${signal_seconds} s before the time limit; the trap below forwards it.
#SBATCH --signal=B:USR1@${signal_seconds}
#SBATCH --requeue
#SBATCH --open-mode=append

set -euo pipefail

# Relative paths in the config (data, output) mean what they meant where the job was submitted. Python then
# finds mmpretrain in the code snapshot: PYTHONPATH puts it first and PYTHONSAFEPATH keeps `-m` from putting
# the working directory (perhaps a live checkout being edited) ahead of it.
cd ${workdir}
export PYTHONPATH=${code_dir}${PYTHONPATH:+:$PYTHONPATH}
export PYTHONSAFEPATH=1

# This job's log (--output above) and where this start's lines begin in it: a requeued job appends, so the lines
# before LOG_OFFSET are earlier starts' and must not decide whether this start is requeued (see the end).
JOB_LOG=${quoted_log_dir}/"$SLURM_JOB_NAME-$SLURM_JOB_ID.out"
LOG_OFFSET=$(stat -c %s "$JOB_LOG" 2>/dev/null || echo 0)

# The first node hosts the c10d rendezvous; every node's torchrun agent meets there. `sed -n 1p`, not
# `head -n1`: head stops reading after one line, and scontrol's SIGPIPE would then fail the job (pipefail).
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
# A port derived from the job id, so two jobs sharing a node do not collide.
MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
export MASTER_ADDR MASTER_PORT
echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NUM_NODES node(s)," \
    "rendezvous at $MASTER_ADDR:$MASTER_PORT"
echo "code snapshot: $(tr '\n' ' ' < ${code_dir}/VERSION)"

# On USR1 (time limit near) note it and pass the signal to srun, which forwards it to torchrun on every node;
# torchrun forwards it to its workers (--signals-to-handle), which save a checkpoint and exit.
USR1_SEEN=0
SRUN_PID=""
on_usr1() {
    USR1_SEEN=1
    echo "USR1: time limit near, asking the trainer to checkpoint and stop"
    [[ -n $SRUN_PID ]] && kill -USR1 "$SRUN_PID" || true
}
trap on_usr1 USR1

# srun runs in the background because bash only runs a trap between commands: a foreground srun would hold it
# back until the job ends. --cpus-per-task is repeated because srun no longer inherits it from sbatch.
# --shutdown-timeout gives the workers the whole warning period to save before torchrun kills them.
# --resume latest is safe on a first start: with no checkpoint yet, training starts from scratch.
srun --ntasks-per-node=1 --cpus-per-task="$SLURM_CPUS_PER_TASK" --kill-on-bad-exit=1 \
    ${python} -m torch.distributed.run \
    --nnodes="$SLURM_NNODES" --nproc-per-node=${gpus_per_node} \
    --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" \
    --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout=${signal_seconds} \
    -m mmpretrain.cli train ${config_path} --resume latest &
SRUN_PID=$!

# `wait` returns early when a trapped signal arrives: keep waiting while srun lives, then collect its status
# (bash keeps a finished background job's exit status for a later `wait`).
wait "$SRUN_PID" || true
while kill -0 "$SRUN_PID" 2>/dev/null; do wait "$SRUN_PID" || true; done
STATUS=0
wait "$SRUN_PID" || STATUS=$?

# Requeue only a run the trainer stopped early with its checkpoint saved: it then prints a line starting
# "mmpretrain train: preempted" and exits 124. torchrun reports that exit as 1, so that line, looked for in this
# start's part of the log only, decides. A USR1 alone proves nothing: it may come as training ends, when the
# trainer completes and exits 0 (or torchrun, signalled on its way out, 1), and a crash must not go round the
# queue again. Process substitution, not a pipe: grep -q stops at the first match, and a tail killed by SIGPIPE
# would make a pipeline fail under pipefail.
trainer_preempted() {
    [[ -r $JOB_LOG ]] && grep -qF "mmpretrain train: preempted" < <(tail -c "+$((LOG_OFFSET + 1))" "$JOB_LOG")
}
if [[ $STATUS -eq 124 ]] || { [[ $STATUS -ne 0 ]] && trainer_preempted; }; then
    echo "requeueing job $SLURM_JOB_ID (exit $STATUS): the trainer saved a checkpoint and stopped early"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
if [[ $USR1_SEEN -eq 1 ]]; then
    echo "not requeueing job $SLURM_JOB_ID (exit $STATUS): USR1 came, but the trainer did not report stopping early"
fi
exit "$STATUS"
