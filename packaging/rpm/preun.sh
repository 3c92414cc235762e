# %preun of the dpengine .rpm: on erase ($1 = 0, not an upgrade) stops and disables the
# service. Configuration, keys and state stay (RPM has no purge; see packaging/README.md).
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now dpengined.service >/dev/null 2>&1 || :
fi
