#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for physflow's real-scheduler tests.
#
#   scripts/slurm_localhost.sh start DIR   write DIR/slurm.conf, start munged, slurmctld, slurmd;
#                                          wait until the node is idle; print "export SLURM_CONF=…"
#   scripts/slurm_localhost.sh stop DIR    stop every daemon started into DIR (by its pid file)
#
# Needs Debian's slurm-wlm and munge (scripts/test.sh installs them) and root: slurmd runs jobs
# as their owner. No systemd: munged runs as user munge with its socket in DIR (a private
# socket, so a munged already running here is left alone); accounting is off, so job history
# comes from squeue while jobs live and from the controller's log afterwards.
set -euo pipefail

cmd=${1:?usage: slurm_localhost.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: slurm_localhost.sh start|stop DIR}")

stop() {
    # Jobs of this private cluster first (their steps die with them), then each daemon by the
    # pid it wrote into DIR: never by name, never anyone else's.
    if [[ -s $dir/slurmctld.pid && -f $dir/slurm.conf ]]; then
        SLURM_CONF=$dir/slurm.conf scancel --quiet --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 50); do
            [[ -z $(SLURM_CONF=$dir/slurm.conf squeue -h -o %i 2>/dev/null) ]] && break
            sleep 0.1
        done
    fi
    for name in slurmd slurmctld munged; do
        pidfile="$dir/$name.pid"
        [[ -s $pidfile ]] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
    if [[ -s $dir/munge.dir ]]; then
        rm -rf -- "$(cat "$dir/munge.dir")"
        rm -f "$dir/munge.dir"
    fi
}

if [[ $cmd == stop ]]; then
    stop
    exit 0
fi
[[ $cmd == start ]] || { echo "usage: slurm_localhost.sh start|stop DIR" >&2; exit 2; }

for bin in munged slurmctld slurmd; do
    command -v "$bin" >/dev/null || [[ -x /usr/sbin/$bin ]] || { echo "$bin not installed (apt-get install slurm-wlm munge)" >&2; exit 3; }
done
export PATH=/usr/sbin:$PATH
mkdir -p "$dir"/{state,spool,log}
trap 'stop' ERR

# munge: its own key and socket, owned by the munge user as munged insists, in a folder of its
# own under the temp dir (DIR may sit inside a folder the munge user cannot enter).
munge=$(mktemp -d "${TMPDIR:-/tmp}/physflow-munge.XXXXXX")
echo "$munge" > "$dir/munge.dir"
dd if=/dev/urandom bs=1 count=1024 of="$munge/munge.key" status=none
chown -R munge:munge "$munge"
chmod 700 "$munge"
chmod 400 "$munge/munge.key"
socket="$munge/munge.socket"
runuser -u munge -- munged --key-file="$munge/munge.key" --socket="$socket" \
    --pid-file="$munge/munged.pid" --log-file="$munge/munged.log" --seed-file="$munge/seed" --force
cp "$munge/munged.pid" "$dir/munged.pid"

cpus=$(nproc)
cat > "$dir/slurm.conf" <<EOF
ClusterName=physflow-test
SlurmctldHost=localhost
SlurmUser=root
SlurmctldPort=$(( 6817 + RANDOM % 1000 ))
SlurmdPort=$(( 7817 + RANDOM % 1000 ))
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmi2
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N localhost

# Ready when the node accepts jobs (idle); fail loudly otherwise, with the logs' tails.
for _ in $(seq 100); do
    state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
    [[ $state == idle ]] && { echo "export SLURM_CONF=$SLURM_CONF"; exit 0; }
    sleep 0.2
done
echo "slurm did not become ready (node state: ${state:-none})" >&2
tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
stop
exit 1
