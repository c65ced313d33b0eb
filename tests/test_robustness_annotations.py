"""One writer per annotation file: a second annotation tool on a `severity.csv`, in another process, opens it
read-only and saves nothing; the first one's answers all survive; a writer killed with SIGKILL leaves the file free,
and the next writer resumes with every answer given.

Each tool here is a separate Python process driven through its stdin: one command a line (`record PATH SEVERITY`,
`state`, `close`), one JSON answer a line on stdout.
"""

import json
import os
import signal
import subprocess
import sys
import warnings

import pytest

from sevdino.data import read_severity_csv
from sevdino.synthetic import make_dataset
from sevdino.widgets import AnnotationWarning, SeverityAnnotations

TOOL = r"""
import json, sys, warnings
from sevdino.widgets import AnnotationError, SeverityAnnotations
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    log = SeverityAnnotations(sys.argv[1], root=sys.argv[2])
def say(**answer):
    print(json.dumps(answer), flush=True)
say(writable=log.writable, notice=log.notice, warnings=[str(w.message) for w in caught], answered=len(log))
for line in sys.stdin:
    command, *args = line.split()
    if command == 'record':
        try:
            label = log.record(args[0], float(args[1]))
            say(saved=True, severity=label.severity, answered=len(log))
        except AnnotationError as e:
            say(saved=False, error=str(e), answered=len(log))
    elif command == 'state':
        say(writable=log.writable, notice=log.notice, answered=sorted(log.answered))
    elif command == 'close':
        log.close()
        say(closed=True)
"""
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


class Tool:
    "An annotation process on `csv_path`; `opened` is its first answer (writable, notice, the warnings it gave)."

    def __init__(self, csv_path, root):
        self.process = subprocess.Popen(
            [sys.executable, '-c', TOOL, str(csv_path), str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        self.opened = self.read()

    def read(self):
        line = self.process.stdout.readline()
        assert line, self.process.stderr.read()
        return json.loads(line)

    def ask(self, *command):
        self.process.stdin.write(' '.join(map(str, command)) + '\n')
        self.process.stdin.flush()
        return self.read()

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)
        return self.process.returncode

    def end(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.process.stdout.close()
        self.process.stderr.close()


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = make_dataset(
        'hdmap-sim',
        tmp_path_factory.mktemp('annotations') / 'hdmap-sim',
        seed=0,
        domains=('A',),
        n_train=8,
        n_test_good=2,
        n_test_faulty=4,
    )
    paths = sorted(read_severity_csv(root / 'severity.csv', root))
    (root / 'severity.csv').unlink()  # the expert starts from nothing
    return root, paths


def answers(csv_path, root):
    "What the data loader reads: {path relative to root: severity}."
    return {
        os.path.relpath(p, root.resolve()): label.severity for p, label in read_severity_csv(csv_path, root).items()
    }


def test_second_tool_is_read_only_and_a_killed_writer_frees_the_file(dataset, tmp_path):
    root, paths = dataset
    csv_path, lock_file = tmp_path / 'severity.csv', tmp_path / '.severity.csv.lock'
    first = Tool(csv_path, root)
    assert first.opened == {'writable': True, 'notice': '', 'warnings': [], 'answered': 0}
    assert first.ask('record', paths[0], 1.5)['saved'] and first.ask('record', paths[1], 4.0)['saved']

    before = csv_path.read_bytes()
    second = Tool(csv_path, root)
    pid = first.process.pid
    notice = f'another annotation tool is writing {csv_path} (pid {pid}); this one is read-only'
    assert second.opened['writable'] is False and second.opened['notice'].startswith(notice), second.opened
    assert second.opened['warnings'] == [second.opened['notice']] and second.opened['answered'] == 2  # shows them
    refused = second.ask('record', paths[2], 9.0)
    assert refused['saved'] is False and refused['error'].startswith(notice), refused
    assert 'or end its process' in refused['error'] and 'the answer for A/test/' in refused['error'], refused
    assert csv_path.read_bytes() == before  # the read-only tool wrote nothing

    assert first.ask('record', paths[2], 6.0)['saved']  # the writer goes on: an append ...
    assert first.ask('record', paths[0], 2.5)['saved']  # ... and a rewrite (a changed answer)
    given = {os.path.relpath(p, root): s for p, s in zip(paths[:3], (2.5, 4.0, 6.0))}
    assert answers(csv_path, root) == given
    assert second.ask('record', paths[3], 3.0)['saved'] is False  # still refused while the writer lives
    assert answers(csv_path, root) == given

    assert first.kill() == -signal.SIGKILL  # no close(), no atexit: the kernel drops the lock
    assert lock_file.exists()  # left behind with the dead pid, and free
    resumed = second.ask('record', paths[3], 3.0)  # the read-only tool takes the file, re-reading it first
    assert resumed == {'saved': True, 'severity': 3.0, 'answered': 4}, resumed
    assert second.ask('state')['answered'] == sorted(given) + [os.path.relpath(paths[3], root)]

    third = Tool(csv_path, root)  # the second is now the writer: the third is read-only
    assert third.opened['writable'] is False and f'(pid {second.process.pid})' in third.opened['notice']
    assert second.ask('close') == {'closed': True} and not lock_file.exists()
    assert third.ask('record', paths[1], 4.0) == {'saved': True, 'severity': 4.0, 'answered': 4}  # same answer
    assert third.ask('state')['writable'] is True
    for tool in (second, third):
        tool.end()
    assert answers(csv_path, root) == {**given, os.path.relpath(paths[3], root): 3.0}  # every answer, once each
    assert len(csv_path.read_text().splitlines()) == 1 + 4


def test_new_writer_after_a_kill_resumes_with_every_answer(dataset, tmp_path):
    root, paths = dataset
    csv_path = tmp_path / 'severity.csv'
    first = Tool(csv_path, root)
    for path, severity in zip(paths, (0.5, 2.0, 7.5)):
        assert first.ask('record', path, severity)['saved']
    assert first.kill() == -signal.SIGKILL
    with warnings.catch_warnings():
        warnings.simplefilter('error', AnnotationWarning)  # no notice, nothing to mend
        with SeverityAnnotations(csv_path, root=root) as writer:
            assert writer.writable and [writer.label(p).severity for p in paths[:3]] == [0.5, 2.0, 7.5]
            assert writer.next_unanswered(paths) == paths[3]
            writer.record(paths[3], 1.0)
    assert answers(csv_path, root) == {os.path.relpath(p, root): s for p, s in zip(paths, (0.5, 2.0, 7.5, 1.0))}
    assert not (tmp_path / '.severity.csv.lock').exists()
