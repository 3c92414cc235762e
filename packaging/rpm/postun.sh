# %postun of the dpengine .rpm: tells systemd the unit changed or went, and on upgrade
# ($1 >= 1) restarts a running service.
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart dpengined.service >/dev/null 2>&1 || :
    fi
fi
