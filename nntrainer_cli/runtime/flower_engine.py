"""The Flower engine of `federate`: a Flower server in this process and, unless it
listens for clients elsewhere (`--listen`), one process per client on 127.0.0.1,
speaking Flower's gRPC protocol. Each client process reads the model and its own share
of the data, plans its own arena, and runs the local engine's client step
(FederatedTrainer.fit); only weights (in .bin order), record counts and metrics cross
the process boundary. A client is `federate MODEL --connect HOST:PORT --client-id K`.

This uses Flower's gRPC API of start_server / start_client with a NumPyClient
(deprecated since Flower 1.13, still served by 1.42, which the `federated` extra pins):
a round costs milliseconds of overhead on localhost. Flower's Deployment Engine
(SuperLink, SuperNodes, `flwr run`) measured 6.3 s a round here: its nodes poll every 3 s
and start a process per message."""

from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from nntrainer_cli.errors import ConfigError, TrainingError

from . import weights as weights_io
from .executor import Executor
from .federation import FederatedTrainer, fedavg, sampled
from .measure import rss_peak_bytes
from .results import ClientResult

CLIENT_EXIT_WAIT = 10   # seconds a client process gets to leave after the last round
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def flower():
    """Flower, quiet: no telemetry, no deprecation banners or per-round log lines."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        import flwr
    except ImportError:
        raise ConfigError("the flower engine needs Flower: pip install "
                          "'nntrainer_cli[federated]'", key="--engine") from None
    logging.getLogger("flwr").setLevel(logging.CRITICAL)   # our own lines say what failed
    return flwr


def parse_address(text: str, key: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) → (host, port)."""
    m = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[\w.\-]+):(\d{1,5})", text)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ConfigError(f"expected HOST:PORT with a port from 1 to 65535, got {text!r}",
                          key=key)
    return m.group(1).strip("[]"), int(m.group(2))


def _agreed(trainer: FederatedTrainer) -> dict:
    """What server and clients must share: the split and the local training."""
    return {"local_epochs": trainer.fed.local_epochs, "clients": trainer.fed.clients,
            "partition": trainer.fed.partition, "seed": trainer.opts.seed}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In a client process before it starts: end with the server (Linux's
    PR_SET_PDEATHSIG), so a killed server leaves no client waiting."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class FlowerServer(FederatedTrainer):
    """Serves the rounds, averages, judges and saves the global weights. Starts the
    client processes (`client_args`: their command line but for --connect and
    --client-id) on 127.0.0.1, or with `listen` waits for clients to join there."""

    def __init__(self, *args, client_args: list[str], listen: str | None, wait: float):
        super().__init__(*args)
        self.client_args, self.listen, self.wait = client_args, listen, wait

    def _train(self, ex: Executor, report, rng, init_rng) -> None:
        fl = flower()
        glob = self._start(ex, report, init_rng)
        address = self.listen or f"127.0.0.1:{_free_port()}"
        # the clients train at once: BLAS threads shared out among them, not each taking
        # every core (8 clients on 2 cores ran rounds 10x slower so)
        threads = str(max(1, (os.cpu_count() or 1) // len(self.clients)))
        env = {**{v: threads for v in THREAD_VARIABLES}, **os.environ}
        # their own session: a Ctrl-C in the terminal reaches the server, which ends them
        procs = [] if self.listen else [
            subprocess.Popen([sys.executable, "-m", "nntrainer_cli", "federate",
                              *self.client_args, "--connect", address, "--client-id",
                              str(c.index)], stdin=subprocess.DEVNULL, env=env,
                             start_new_session=True, preexec_fn=_die_with_parent)
            for c in self.clients]
        finished = False
        try:
            strategy = _strategy(fl, self, ex, glob, procs)
            fl.server.start_server(server_address=address, strategy=strategy,
                                   config=fl.server.ServerConfig(num_rounds=self.fed.rounds))
            if strategy.error is not None:
                raise strategy.error
            finished = True
        finally:
            for p in procs:
                if finished:
                    try:
                        p.wait(CLIENT_EXIT_WAIT)
                    except subprocess.TimeoutExpired:
                        pass
                if p.poll() is None:
                    p.kill()
                    p.wait()
        report.federation.server_peak_rss_bytes = rss_peak_bytes()
        self.finish(ex)


def _strategy(fl, server: FlowerServer, ex: Executor, glob: list[np.ndarray], procs):
    """FedAvg as Flower runs it, averaging with our fedavg (by client, so the sum's
    order and bits are the local engine's) and judging the global weights after each
    round. A client that fails is left out of that round; with none left, the run
    ends. A stop request (Ctrl-C, SIGTERM) ends it after the round in progress."""
    from flwr.common import (FitIns, GetPropertiesIns, ndarrays_to_parameters,
                             parameters_to_ndarrays)

    n = len(server.clients)
    agreed = _agreed(server)

    class Strategy(fl.server.strategy.FedAvg):
        error: BaseException | None = None
        expected: set[int] = set()   # the clients asked to train this round
        ids: dict[str, int] = {}     # Flower's client → our client id

        def _stop(self, error: BaseException | None = None) -> bool:
            """Whether the run must end: an error already, a new one, or a stop request."""
            try:
                server.stops.check()
            except KeyboardInterrupt as e:
                error = error or e
            if self.error is None:
                self.error = error
            return self.error is not None

        def configure_fit(self, server_round, parameters, client_manager):
            if server_round == 1:   # every client joins the first round
                server.stops.arm()  # Flower's start_server took the signals
                deadline = time.monotonic() + server.wait
                while len(client_manager) < n and not self._stop():
                    gone = [k for k, p in enumerate(procs) if p.poll() is not None]
                    if gone:
                        self._stop(TrainingError(f"client {gone[0]} exited with code "
                                                 f"{procs[gone[0]].returncode} before the "
                                                 "first round"))
                    elif time.monotonic() > deadline:
                        self._stop(TrainingError(f"only {len(client_manager)} of {n} clients "
                                                 f"joined in {server.wait:g} s"))
                    time.sleep(0.05)
            if not self.error and not len(client_manager):
                self._stop(TrainingError(f"no client is left for round {server_round}"))
            if self._stop():
                return []
            self.t0 = time.perf_counter()
            config = {"round": server_round, **agreed}
            for cid, proxy in client_manager.all().items():
                if cid not in self.ids:
                    self.ids[cid] = int(proxy.get_properties(GetPropertiesIns({}), None, None)
                                        .properties["client"])
            chosen = set(sampled(server.fed, server.opts.seed, server_round))
            asked = [(proxy, FitIns(parameters, config))
                     for cid, proxy in client_manager.all().items() if self.ids[cid] in chosen]
            self.expected = {self.ids[p.cid] for p, _ in asked}
            for k in sorted(chosen - self.expected):
                server._log(f"warning: client {k} is gone; round {server_round} goes on "
                            "without it")
            if not asked:
                self._stop(TrainingError(f"no sampled client is left for round "
                                         f"{server_round}"))
            return asked

        def aggregate_fit(self, server_round, results, failures):
            if self.error is not None:
                return None, {}
            updates = sorted((res.metrics["client"], parameters_to_ndarrays(res.parameters),
                              res) for _, res in results)
            for k in sorted(self.expected - {k for k, _, _ in updates}):
                server._log(f"warning: client {k} failed in round {server_round}; it is left "
                            "out of the average")
            if not results:
                self._stop(TrainingError(f"every client failed in round {server_round}"))
                return None, {}
            for g, w in zip(glob, fedavg([(w, res.num_examples) for _, w, res in updates])):
                np.copyto(g, w)
            clients = [ClientResult(int(m["client"]), res.num_examples, m["loss"],
                                    m["accuracy"], m["seconds"], int(m["peak_rss"]))
                       for _, _, res in updates for m in [res.metrics]]
            try:
                server.finish_round(ex, server_round, clients, glob, self.t0,
                                    max(int(res.metrics["iteration"]) for _, _, res in updates))
            except BaseException as e:   # a stop request, a full disk: end after this round
                self._stop(e)
                return None, {}
            return ndarrays_to_parameters(glob), {}

        def configure_evaluate(self, server_round, parameters, client_manager):
            return []   # the server judges the global weights itself

    return Strategy(initial_parameters=ndarrays_to_parameters(glob), min_fit_clients=1,
                    min_available_clients=1, fraction_evaluate=0.0, min_evaluate_clients=0)


class FlowerClient(FederatedTrainer):
    """This process as client `clients[0]` of the Flower server at `address`."""

    def __init__(self, *args, address: str, wait: float):
        super().__init__(*args)
        self.address, self.wait = address, wait
        self.rounds_done = 0

    def _connect(self) -> None:
        """Wait until the server listens (Flower's client does not retry)."""
        host, port = parse_address(self.address, "--connect")
        deadline = time.monotonic() + self.wait
        while True:
            try:
                socket.create_connection((host, port), timeout=1).close()
                return
            except socket.gaierror as e:
                raise ConfigError(f"cannot find host {host}: {e.strerror}",
                                  key="--connect") from None
            except OSError:
                if time.monotonic() > deadline:
                    raise ConfigError(f"cannot reach a Flower server at {self.address} "
                                      f"(waited {self.wait:g} s)", key="--connect") from None
                time.sleep(0.05)

    def _train(self, ex: Executor, report, rng, init_rng) -> None:
        fl = flower()
        self.report, client, trainer = report, self.clients[0], self
        shapes = [shape for _, shape, _ in ex.weight_tensors()]   # whole, however tiled
        ours = _agreed(self)
        self._connect()

        class Client(fl.client.NumPyClient):
            def get_properties(self, config):
                return {"client": client.index}

            def fit(self, parameters, config):
                for key in ours:
                    if ours[key] is not None and config[key] != ours[key]:
                        flag = "--" + key.replace("_", "-")
                        raise ConfigError(f"the server federates with {flag} {config[key]}, "
                                          f"this client was started with {ours[key]}", key=flag)
                if [tuple(w.shape) for w in parameters] != [tuple(s) for s in shapes]:
                    raise ConfigError("the server's model has other weights than this one",
                                      key="--connect")
                result = trainer.fit(ex, client, parameters, int(config["round"]))
                weights = weights_io.read_whole(ex)
                trainer.rounds_done += 1
                return weights, client.ds.count, {
                    "client": client.index, "loss": result.loss, "accuracy": result.accuracy,
                    "seconds": result.seconds, "iteration": client.iteration,
                    "peak_rss": rss_peak_bytes()}

        try:
            fl.client.start_client(server_address=self.address, client=Client().to_client())
        except Exception as e:   # grpc's RpcError: the server went away, or is not Flower
            if type(e).__module__.startswith("grpc"):
                raise TrainingError(f"lost the Flower server at {self.address} after "
                                    f"{self.rounds_done} rounds") from None
            raise
