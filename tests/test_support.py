"""The test fixtures themselves work: a real public-inbox, real kernel trees."""

from __future__ import annotations

import gzip
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import pytest

from support import ktree
from support.lore import LoreServerError, message_id, split_mbox

SK_LOOKUP_V2 = '20200511185218.1422406-1-jakub@cloudflare.com'  # cover letter, 17 patches


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_lore_serves_thread_by_msgid_at_all(lore):
    mbox = gzip.decompress(fetch(lore.message_url(SK_LOOKUP_V2) + 't.mbox.gz'))
    msgs = split_mbox(mbox)
    assert len(msgs) == 34  # cover, 17 patches, 16 replies
    assert {message_id(m) for m in msgs} >= {f'20200511185218.1422406-{i}-jakub@cloudflare.com'
                                             for i in range(1, 19)}
    # per-list inboxes and the bare /MSGID/ redirect work as on lore
    assert status(lore.message_url('seed002.0.9101b0a11b71@fixtures.invalid', 'netdev') + 'raw') == 200
    assert status(lore.message_url('20210604114233.GE31173@arm.com', 'kvm') + 'raw') == 200
    assert status(lore.url + SK_LOOKUP_V2 + '/') == 200
    with pytest.raises(LoreServerError, match='read-only'):
        lore.add_inbox('netdev', [b'Subject: x\n\nx\n'])


def test_liblore_reads_thread(lore):
    liblore = pytest.importorskip('liblore')
    with liblore.LoreNode(lore.all_url) as node:
        msgs = node.get_thread_by_msgid(SK_LOOKUP_V2)
    # a list of email.message.EmailMessage, one per Message-ID
    assert len(msgs) == 34  # cover, 17 patches, 16 replies
    assert len({m['Message-ID'] for m in msgs}) == 34
    assert msgs[0]['Subject'].startswith('[PATCH bpf-next v2 00/17]')


def test_b4_am(lore, tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / 'cache'))
    p = subprocess.run(['b4', *lore.b4_args(), 'am', '-o', str(tmp_path / 'out'), SK_LOOKUP_V2],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    mbx = list((tmp_path / 'out').glob('*.mbx'))
    assert len(mbx) == 1
    assert mbx[0].read_bytes().count(b'\nSubject: [PATCH ') + 1 >= 17


def test_added_mail_becomes_visible(lore_factory, data_dir):
    srv = lore_factory()
    v1 = data_dir / 'messages' / 'xfrm-lock-input-tasklet-v1.mbox'
    [mid1] = srv.add_inbox('netdev', [v1])
    assert status(srv.message_url(mid1) + 'raw') == 200

    reply = (b'From: Reviewer <rev@example.org>\n'
             b'Subject: Re: [PATCH] xfrm : lock input tasklet skb queue\n'
             b'Date: Tue, 18 Oct 2016 10:00:00 +0000\n'
             b'Message-ID: <reply-1@fixtures.invalid>\n'
             b'In-Reply-To: <' + mid1.encode() + b'>\n'
             b'References: <' + mid1.encode() + b'>\n\n'
             b'Please do not use ifdef RT in net/.\n')
    v2 = data_dir / 'messages' / 'xfrm-lock-input-tasklet-v2.mbox'
    mids = srv.add_inbox('netdev', [reply, v2])
    assert mids[0] == 'reply-1@fixtures.invalid'
    thread = split_mbox(gzip.decompress(fetch(srv.message_url(mid1) + 't.mbox.gz')))
    assert [message_id(m) for m in thread] == [mid1, 'reply-1@fixtures.invalid']
    for mid in mids:
        assert status(srv.message_url(mid, 'netdev') + 'raw') == 200
        q = urllib.parse.quote(f'm:"{mid}"')
        assert status(f'{srv.all_url}?q={q}&x=m') == 200  # search sees it too

    # a new inbox on the running server
    srv.add_inbox('dccp', [v1])
    assert status(srv.message_url(mid1, 'dccp') + 'raw') == 200


def test_make_patch_applies_with_git_am(tmp_path):
    path = 'net/xfrm/xfrm_input.c'
    try:
        files = ktree.kernel_files([path, 'include/net/xfrm.h'])
    except ktree.KernelSourceMissing as e:
        pytest.skip(str(e))
    tree = tmp_path / 'tree'
    base = ktree.make_tree(tree, files)
    assert ktree.make_tree(tmp_path / 'again', files) == base  # deterministic

    def edit(text: str) -> str:
        return text.replace('int xfrm_input(struct sk_buff *skb, int nexthdr, __be32 spi, int encap_type)\n{\n',
                            'int xfrm_input(struct sk_buff *skb, int nexthdr, __be32 spi, int encap_type)\n'
                            '{\n\t/* test edit */\n', 1)

    patch = ktree.make_patch(tree, {path: edit}, 'xfrm: add a comment',
                             'Jane Dev <jane@example.org>', body='Just a test.')
    assert ktree.git(tree, 'rev-parse', 'HEAD').decode().strip() == base  # tree untouched
    assert not ktree.git(tree, 'status', '--porcelain')
    assert b'Subject: [PATCH] xfrm: add a comment' in patch
    assert b'Signed-off-by: Jane Dev <jane@example.org>' in patch
    assert message_id(split_mbox(patch)[0])

    clone = ktree.clone_tree(tree, tmp_path / 'clone')
    ktree.git(clone, 'am', '-q', input=patch)
    assert '/* test edit */' in (clone / path).read_text()

    series = ktree.make_series(tree, [('xfrm: one', {path: edit}),
                                      ('xfrm: two', {'include/net/xfrm.h': lambda s: s + '/* two */\n'})],
                               cover=('xfrm: two changes', 'Cover text.'))
    assert len(series) == 3 and b'Subject: [PATCH 0/2] xfrm: two changes' in series[0]
    clone2 = ktree.clone_tree(tree, tmp_path / 'clone2')
    ktree.git(clone2, 'am', '-q', input=b''.join(series[1:]))
    assert len(ktree.git(clone2, 'rev-list', f'{base}..HEAD').split()) == 2


@pytest.mark.slow
def test_full_kernel_tree(full_kernel_tree):
    path, base = full_kernel_tree
    assert ktree.git(path, 'rev-parse', 'HEAD').decode().strip() == base
    assert (path / 'net' / 'core' / 'filter.c').is_file()
    tracked = ktree.git(path, 'ls-files', '--', '.mailmap', '.gitignore', 'MAINTAINERS').split()
    assert tracked == [b'.gitignore', b'.mailmap', b'MAINTAINERS']
    assert b'Debian' not in (path / '.gitignore').read_bytes()
