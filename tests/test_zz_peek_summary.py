from tests.test_summary_page import *
def test_peek(editor_client, hashtag):
    approve(store(replace(item(1, HOSTILE_TEXT, author=HOSTILE_HANDLE, tags=(TAG, HOSTILE_TAG)), like_count=1)))
    conversation(hashtag)
    response, soup = page(editor_client, **DAY)
    print(table(soup, "hashtags"))
    open("/tmp/summary.html","w").write(response.content.decode())
