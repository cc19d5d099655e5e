#!/data/data/com.termux/files/usr/bin/bash
# Turn an Android phone (Termux) into a clusterai worker that starts with Termux and restarts when it
# fails. Usage, in Termux:  bash install.sh 'caijoin1....'   (the code from `clusterai join-code`)
# Keep Termux running: Android may stop it otherwise (termux-wake-lock, and exempt Termux from
# battery optimisation).
set -euo pipefail
code="${1:?usage: install.sh JOIN_CODE [NAME]}"
name="${2:-$(getprop ro.product.model 2>/dev/null | tr -c 'A-Za-z0-9_.\n-' '-' || hostname)}"

pkg install -y python termux-services      # Python, and runit's sv for the service
pip install --upgrade 'clusterai'           # the light worker: Dask, PyYAML and psutil only

# the identity (CA, certificate, key, token) goes to ~/.clusterai/identity, readable by this user only
clusterai join "$code" --name "$name" --no-start
head_address="$(cat ~/.clusterai/identity/head)"
clusterai worker "$head_address" --name "$name" --tls-dir ~/.clusterai/identity --tls-node "$name" \
    --token-file ~/.clusterai/identity/token --nthreads 1 --install-service

# termux-services starts runit's service directory with the next Termux session
source "$PREFIX/etc/profile.d/start-services.sh" 2>/dev/null || true
sv-enable "clusterai-worker-$name"
termux-wake-lock 2>/dev/null || true
echo "worker $name joined; it starts with Termux (sv status clusterai-worker-$name)"
