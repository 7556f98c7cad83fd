#!/bin/busybox sh
# The initramfs of the systemd guest (internal/powercut, systemd_test.go):
# loads the virtio modules the Debian cloud kernel has as modules, mounts
# the root filesystem (/dev/vda, the cached Debian image) and hands over to
# systemd as PID 1 with switch_root.
#
# pc.setup=1 (the first boot of a disk): copies /pc/sys (the agent, its
# configuration and state, the units from docs/systemd verbatim, the probe)
# onto the root and runs `systemctl enable` in it, as an installer would.
# It also enables systemd-networkd with no network configured and has
# multi-user.target want network-online.target (as a unit that needs the
# network would): a device whose network is down at boot, where
# systemd-networkd-wait-online waits its two minutes for a link that never
# comes.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /pc/modules); do insmod /lib/modules/$m.ko 2>/dev/null; done
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^pc\.$1=//p"; }
fail() { echo "PC:INITRDFAIL $*"; sync; while :; do sleep 1000; done; }

i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
MNT=$(arg mount); [ -n "$MNT" ] || MNT=data=ordered
mkdir -p /newroot
mount -t ext4 -o "$MNT" /dev/vda /newroot || fail mount /dev/vda
if [ "$(arg setup)" = 1 ]; then
  cp -a /pc/sys/. /newroot/ || fail copy
  chroot /newroot /bin/systemctl enable edgefleet-agent.service edgefleet-probe.service systemd-networkd.service || fail systemctl enable
  chroot /newroot /bin/systemctl add-wants multi-user.target network-online.target || fail systemctl add-wants
  sync
fi
echo "PC:INITRD $(cut -d' ' -f1 /proc/uptime)"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
