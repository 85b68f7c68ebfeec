#!/bin/sh
B=/work/main/target/release/dtu-bench
for i in 1 2 3; do
  mkdir -p /tmp/hr-wan-$i
  $B link-efficiency --preset wan-100m-40ms --out /tmp/hr-wan-$i > /tmp/hr-wan-$i/stdout.txt 2>&1
  grep -h '^  wan' /tmp/hr-wan-$i/stdout.txt | cut -c1-260 | sed "s/^/$i /" >> /tmp/hr.txt
  vmstat 1 2 | tail -1 >> /tmp/hr.txt
done
mkdir -p /tmp/hr-others
$B link-efficiency --preset lossy-wan --preset bonded-reorder --preset thin-return --preset wan-1g-10ms --preset bridged-10m --out /tmp/hr-others > /tmp/hr-others/stdout.txt 2>&1
grep -h '^  ' /tmp/hr-others/stdout.txt | cut -c1-260 >> /tmp/hr.txt
echo done >> /tmp/hr.txt
