export PYTHONPATH=/tmp/site PATH="$HOME/.local/bin:/opt/torch/.venv/bin:$PATH"
timeout 200 python3 -m pytest -q -x -m gpu -p no:cacheprovider tests/test_fast.py 2>&1 | grep -v "^ " | tail -8
OUT=/tmp/sg4 OFFLINE_RUNS= timeout 300 bash benchmarks/serve_gpu.sh 2>&1 | tail -40
