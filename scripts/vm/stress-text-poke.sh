#!/bin/sh
# Arm and remove a kprobe on a hot function (int3 text pokes, optimizer jmp) and flip
# tracepoint static keys, while two processes run read/write syscalls on both CPUs.
# Shows why scripts/vm/runner.py runs qemu with -accel tcg,thread=single: with thread=multi
# (QEMU 7.2) both Debian guests oops or soft-lock within seconds; with thread=single 300
# rounds pass.  Usage (the guest's /tmp is its own, so run it from the checkout):
#   python3 scripts/vm/runner.py 6.12 -- N=300 sh scripts/vm/stress-text-poke.sh
#   TETRAPIPE_VM_TCG_THREAD=multi python3 scripts/vm/runner.py 6.12 -- sh scripts/vm/stress-text-poke.sh
T=/sys/kernel/tracing
[ -d $T/events ] || mount -t tracefs none $T
echo 0 > $T/tracing_on
dd if=/dev/zero of=/dev/null bs=1 count=1000000000 2>/dev/null & A=$!
dd if=/dev/zero of=/dev/null bs=1 count=1000000000 2>/dev/null & B=$!
i=0
start=$(date +%s)
while [ $i -lt ${N:-1500} ]; do
  echo 'p:myp vfs_read' > $T/kprobe_events
  echo 1 > $T/events/kprobes/myp/enable
  echo 1 > $T/events/raw_syscalls/sys_exit/enable
  [ $((i % 4)) -eq 0 ] && sleep 0.1   # let the optimizer turn int3 into a jmp sometimes
  echo 0 > $T/events/raw_syscalls/sys_exit/enable
  echo 0 > $T/events/kprobes/myp/enable
  echo > $T/kprobe_events
  i=$((i+1))
  [ $((i % 100)) -eq 0 ] && echo "rounds $i $(( $(date +%s) - start ))s"
done
kill $A $B
echo done $i
