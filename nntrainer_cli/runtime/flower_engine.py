"""The Flower engine of `federate`: a Flower server in this process and one process per
client on 127.0.0.1, speaking Flower's gRPC protocol. Each client process reads the
model and its own share of the data, plans its own arena, and runs the local engine's
client step (FederatedTrainer.fit); only weights (in .bin order), record counts and
metrics cross the process boundary. A client on another machine is the same command
with `--connect HOST:PORT --client-id K`.

This uses Flower's gRPC API of start_server / start_client with a NumPyClient
(deprecated since Flower 1.13, still served by 1.42, which the `federated` extra pins):
a round costs milliseconds of overhead on localhost. Flower's Deployment Engine
(SuperLink, SuperNodes, `flwr run`) measured 6.3 s a round here: its nodes poll every 3 s
and start a process per message."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time

import numpy as np

from nntrainer_cli.errors import ConfigError, TrainingError

from .executor import Executor
from .federation import FederatedTrainer, fedavg
from .measure import rss_peak_bytes
from .results import ClientResult

CLIENT_EXIT_WAIT = 10   # seconds a client process gets to leave after the last round
JOIN_WAIT = 120         # seconds the client processes get to join before the first round
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def flower():
    """Flower, quiet: no telemetry, no deprecation banners or per-round log lines."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        import flwr
    except ImportError:
        raise ConfigError("the flower engine needs Flower: pip install "
                          "'nntrainer_cli[federated]'", key="--engine") from None
    logging.getLogger("flwr").setLevel(logging.ERROR)
    return flwr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FlowerServer(FederatedTrainer):
    """Starts the client processes (`client_args`: their command line but for --connect
    and --client-id), serves the rounds, averages, judges and saves the global weights."""

    def __init__(self, *args, client_args: list[str]):
        super().__init__(*args)
        self.client_args = client_args

    def _train(self, ex: Executor, report, rng, init_rng) -> None:
        fl = flower()
        glob = self._start(ex, report, init_rng)
        address = f"127.0.0.1:{_free_port()}"
        # the clients train at once: BLAS threads shared out among them, not each taking
        # every core (8 clients on 2 cores ran rounds 10x slower so)
        threads = str(max(1, (os.cpu_count() or 1) // len(self.clients)))
        env = {**{v: threads for v in THREAD_VARIABLES}, **os.environ}
        procs = [subprocess.Popen([sys.executable, "-m", "nntrainer_cli", "federate",
                                   *self.client_args, "--connect", address,
                                   "--client-id", str(c.index)], stdin=subprocess.DEVNULL,
                                  env=env)
                 for c in self.clients]
        try:
            strategy = _strategy(fl, self, ex, glob, procs)
            fl.server.start_server(server_address=address, strategy=strategy,
                                   config=fl.server.ServerConfig(num_rounds=self.fed.rounds))
            if strategy.error is not None:
                raise strategy.error
        finally:
            for p in procs:
                try:
                    p.wait(CLIENT_EXIT_WAIT)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        report.federation.server_peak_rss_bytes = rss_peak_bytes()
        self.finish(ex)


def _strategy(fl, server: FlowerServer, ex: Executor, glob: list[np.ndarray], procs):
    """FedAvg as Flower runs it, averaging with our fedavg (by client, so the sum's
    order and bits are the local engine's) and judging the global weights after each
    round. A client that fails is left out of that round; with none left, the run ends."""
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays

    class Strategy(fl.server.strategy.FedAvg):
        error: BaseException | None = None

        def configure_fit(self, server_round, parameters, client_manager):
            deadline = time.monotonic() + JOIN_WAIT
            while server_round == 1 and len(client_manager) < len(procs):
                gone = [k for k, p in enumerate(procs) if p.poll() is not None]
                if gone or time.monotonic() > deadline:   # every client joins the first round
                    self.error = TrainingError(
                        f"client {gone[0]} exited with code {procs[gone[0]].returncode} before "
                        "the first round" if gone else f"only {len(client_manager)} of "
                        f"{len(procs)} clients joined in {JOIN_WAIT} s")
                    return []
                time.sleep(0.05)
            if self.error is None and not len(client_manager):
                self.error = TrainingError(f"no client is left for round {server_round}")
            if self.error is not None:
                return []
            self.t0 = time.perf_counter()
            config = {"round": server_round}
            return [(c, FitIns(parameters, config)) for c in client_manager.all().values()]

        def aggregate_fit(self, server_round, results, failures):
            if self.error is not None:
                return None, {}
            for f in failures:
                server._log(f"warning: a client failed in round {server_round} "
                            f"({type(f).__name__}); it is left out of the average")
            if not results:
                self.error = TrainingError(f"every client failed in round {server_round}")
                return None, {}
            updates = sorted((res.metrics["client"], parameters_to_ndarrays(res.parameters),
                              res) for _, res in results)
            new = fedavg([(w, res.num_examples) for _, w, res in updates])
            for g, w in zip(glob, new):
                np.copyto(g, w)
            clients = [ClientResult(int(m["client"]), res.num_examples, m["loss"],
                                    m["accuracy"], m["seconds"], int(m["peak_rss"]))
                       for _, _, res in updates for m in [res.metrics]]
            try:
                server.finish_round(ex, server_round, clients, glob, self.t0,
                                    max(int(res.metrics["iteration"]) for _, _, res in updates))
            except BaseException as e:   # a stop request, a full disk: end after this round
                self.error = e
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

    def _train(self, ex: Executor, report, rng, init_rng) -> None:
        fl = flower()
        self.report, client, trainer = report, self.clients[0], self
        host, _, port = self.address.rpartition(":")
        deadline = time.monotonic() + self.wait
        while socket.socket().connect_ex((host, int(port))):
            if time.monotonic() > deadline:
                raise ConfigError(f"cannot reach a Flower server at {self.address} (waited "
                                  f"{self.wait:g} s)", key="--connect")
            time.sleep(0.05)

        class Client(fl.client.NumPyClient):
            def fit(self, parameters, config):
                result = trainer.fit(ex, client, parameters, int(config["round"]))
                weights = []
                for name in ex.weight_names():
                    with ex.persistent(name, write=False) as v:
                        weights.append(v.copy())
                return weights, client.ds.count, {
                    "client": client.index, "loss": result.loss, "accuracy": result.accuracy,
                    "seconds": result.seconds, "iteration": client.iteration,
                    "peak_rss": rss_peak_bytes()}

        try:
            fl.client.start_client(server_address=self.address, client=Client().to_client())
        except Exception as e:   # grpc's RpcError: the server went away
            if type(e).__module__.startswith("grpc"):
                raise TrainingError(f"lost the Flower server at {self.address}") from None
            raise
