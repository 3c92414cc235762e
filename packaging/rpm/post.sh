# %post of the dpengine .rpm: creates the dpengine user and group and the key directory
# (/usr/lib/sysusers.d/dpengine.conf, /usr/lib/tmpfiles.d/dpengine.conf), and tells systemd
# about the unit. Enables and starts nothing.
systemd-sysusers dpengine.conf || :
systemd-tmpfiles --create dpengine.conf || :
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null 2>&1 || :
fi
